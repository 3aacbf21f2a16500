"""Sentence-level scoring of a prediction file against gold (format spec, "Scoring").

End-to-end RE/UC: every gold pair / supplement is scored; if the system did not find its
entities (one-to-one span match, exact first, then overlapping, same type) it counts as
wrong ("missed"). The "found" figures score only items whose entities were found; for a
prediction file made with gold entities given they are the classic gold-entity figures.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extraction.corpus import RELATION_TYPES, USAGE_STATUSES, Entity, Record, parse_record
from extraction.corpus_stats import re_pairs
from extraction.metrics import (
    PRF,
    bootstrap_ci,
    f1_from_counts,
    label_counts,
    label_metrics_from_counts,
    macro_f1,
    matching_pairs,
)

MISSED = "missed"
UNPARSEABLE = "unparseable"
TRIPLE_RELATIONS = ("indication", "adverse_event")


@dataclass
class Predictions:
    by_id: dict[str, Record] = field(default_factory=dict)
    unparseable_tasks: Counter[str] = field(default_factory=Counter)
    invalid_lines: list[str] = field(default_factory=list)


def load_predictions(path: Path) -> Predictions:
    """Read predictions leniently: bad lines are counted (and their gold scored as misses)."""
    preds = Predictions()
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
            rec = parse_record(obj, lenient=True)
        except Exception as exc:  # any malformed line is one counted, reported failure
            preds.invalid_lines.append(f"line {lineno}: {exc}")
            continue
        preds.by_id[rec.id] = rec
        for task in obj.get("unparseable") or []:
            preds.unparseable_tasks[str(task).lower()] += 1
    return preds


def _overlap(a: Entity, b: Entity) -> bool:
    return a.type == b.type and a.start < b.end and b.start < a.end


def _key(e: Entity) -> tuple[str, int, int]:
    return (e.type, e.start, e.end)


def align_entities(gold: Record, pred: Record) -> dict[str, str]:
    """Gold entity id -> predicted entity id: exact spans first, then overlapping, one-to-one."""
    pred_by_key = {_key(p): p.id for p in pred.entities}
    mapping = {g.id: pred_by_key[_key(g)] for g in gold.entities if _key(g) in pred_by_key}
    used = set(mapping.values())
    rest_g = [g for g in gold.entities if g.id not in mapping]
    rest_p = [p for p in pred.entities if p.id not in used]
    for i, j in matching_pairs(rest_g, rest_p, _overlap).items():
        mapping[rest_g[i].id] = rest_p[j].id
    return mapping


def _ner_counts(gold: Record, pred: Record, etype: str | None) -> list[int]:
    g = [e for e in gold.entities if etype is None or e.type == etype]
    p = [e for e in pred.entities if etype is None or e.type == etype]
    strict = len({_key(e) for e in g} & {_key(e) for e in p})
    relaxed = len(matching_pairs(g, p, _overlap))
    return [strict, len(p) - strict, len(g) - strict, relaxed, len(p) - relaxed, len(g) - relaxed]


def _triples(rec: Record) -> list[tuple[Entity, Entity, str]]:
    out = []
    for r in rec.relations:
        if r.type in TRIPLE_RELATIONS:
            out.append((rec.entity(r.head), rec.entity(r.tail), r.type))
    return out


def _te_counts(gold: Record, pred: Record) -> list[int]:
    g, p = _triples(gold), _triples(pred)
    exact = {(_key(h), _key(t), r) for h, t, r in g}
    strict = sum((_key(h), _key(t), r) in exact for h, t, r in p)

    def loose(a: tuple[Entity, Entity, str], b: tuple[Entity, Entity, str]) -> bool:
        return a[2] == b[2] and _overlap(a[0], b[0]) and _overlap(a[1], b[1])

    relaxed = len(matching_pairs(g, p, loose))
    return [strict, len(p) - strict, len(g) - strict, relaxed, len(p) - relaxed, len(g) - relaxed]


def _pair_labels(gold: Record, pred: Record, mapping: dict[str, str]) -> list[tuple[str, str]]:
    pred_rel = {(r.head, r.tail): r.type for r in pred.relations}
    out = []
    for sid, eid, label in re_pairs(gold):
        ps, pe = mapping.get(sid), mapping.get(eid)
        if ps is None or pe is None:
            out.append((label, MISSED))
            continue
        found = pred_rel.get((ps, pe), "not_related")
        out.append((label, found if found is not None else UNPARSEABLE))
    return out


def _usage_labels(gold: Record, pred: Record, mapping: dict[str, str]) -> list[tuple[str, str]]:
    pred_usage = {u.entity: u.status for u in pred.usage}
    out = []
    for u in gold.usage:
        pid = mapping.get(u.entity)
        if pid is None:
            out.append((str(u.status), MISSED))
            continue
        status = pred_usage.get(pid)
        out.append((str(u.status), status if status is not None else UNPARSEABLE))
    return out


def _norm_counts(gold: Record, pred: Record) -> list[int]:
    pred_by_key = {_key(p): p for p in pred.entities}
    correct = total = 0
    for g in gold.supplements:
        p = pred_by_key.get(_key(g))
        if p is None or g.normalized is None:
            continue
        total += 1
        correct += (p.normalized or "").strip().lower() == g.normalized
    return [correct, total]


@dataclass
class SentenceScores:
    """Per-record count rows (for totals and the bootstrap) and confusion pairs."""

    rows: dict[str, list[list[int]]] = field(default_factory=dict)
    re_pairs: list[tuple[str, str]] = field(default_factory=list)
    uc_pairs: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, row: list[int]) -> None:
        self.rows.setdefault(name, []).append(row)

    def matrix(self, name: str) -> np.ndarray:
        return np.array(self.rows[name], dtype=float)


def _score_record(gold: Record, pred: Record, scores: SentenceScores) -> None:
    ner = _ner_counts(gold, pred, None)
    scores.add("ner_strict", ner[:3])
    scores.add("ner_relaxed", ner[3:])
    for etype in ("supplement", "event"):
        typed = _ner_counts(gold, pred, etype)
        scores.add(f"ner_strict_{etype}", typed[:3])
        scores.add(f"ner_relaxed_{etype}", typed[3:])
    scores.add("normalization", _norm_counts(gold, pred))
    te = _te_counts(gold, pred)
    scores.add("te_strict", te[:3])
    scores.add("te_relaxed", te[3:])
    mapping = align_entities(gold, pred)
    for task, pairs, labels in (
        ("re", _pair_labels(gold, pred, mapping), RELATION_TYPES),
        ("uc", _usage_labels(gold, pred, mapping), USAGE_STATUSES),
    ):
        g = [a for a, _ in pairs]
        p = [b for _, b in pairs]
        scores.add(f"{task}_e2e", label_counts(g, p, labels))
        found = [(a, b) for a, b in pairs if b != MISSED]
        scores.add(
            f"{task}_found", label_counts([a for a, _ in found], [b for _, b in found], labels)
        )
        (scores.re_pairs if task == "re" else scores.uc_pairs).extend(pairs)


def _confusion(pairs: list[tuple[str, str]], labels: tuple[str, ...]) -> dict[str, dict[str, int]]:
    cols = (*labels, UNPARSEABLE, MISSED)
    return {g: {p: sum(1 for a, b in pairs if a == g and b == p) for p in cols} for g in labels}


def _simple_block(scores: SentenceScores, name: str, ci: bool) -> dict[str, Any]:
    mat = scores.matrix(name)
    tp, fp, fn = (int(x) for x in mat.sum(axis=0))
    out: dict[str, Any] = PRF(tp, fp, fn).as_dict()
    if ci:
        out["f1_ci95"] = bootstrap_ci(mat, lambda c: f1_from_counts(*c))
    return out


def _label_block(scores: SentenceScores, name: str, labels: tuple[str, ...]) -> dict[str, Any]:
    mat = scores.matrix(name)
    out = label_metrics_from_counts(list(mat.sum(axis=0)), labels)
    out["accuracy_ci95"] = bootstrap_ci(mat, lambda c: c[-2] / c[-1] if c[-1] else 0.0)
    out["macro_f1_ci95"] = bootstrap_ci(mat, lambda c: macro_f1(c, len(labels)))
    return out


def score_sentences(gold: list[Record], preds: Predictions) -> dict[str, Any]:
    """The full sentence-level report as plain data."""
    scores = SentenceScores()
    missing = 0
    for rec in gold:
        pred = preds.by_id.get(rec.id)
        if pred is None:
            missing += 1
            pred = Record(rec.id, rec.text)
        _score_record(rec, pred, scores)
    if not gold:
        raise ValueError("the gold file has no records")
    norm = scores.matrix("normalization").sum(axis=0)
    report: dict[str, Any] = {
        "records": len(gold),
        "missing_predictions": missing,
        "invalid_prediction_lines": len(preds.invalid_lines),
        "invalid_prediction_examples": preds.invalid_lines[:5],
        "extra_predictions": len(set(preds.by_id) - {r.id for r in gold}),
        "unparseable": _unparseable(preds, scores),
    }
    report["ner"] = {
        "strict": _simple_block(scores, "ner_strict", True),
        "relaxed": _simple_block(scores, "ner_relaxed", True),
        "per_type": {
            f"{t}_{m}": _simple_block(scores, f"ner_{m}_{t}", False)
            for t in ("supplement", "event")
            for m in ("strict", "relaxed")
        },
        "normalization_accuracy": round(norm[0] / norm[1], 4) if norm[1] else None,
        "normalization_n": int(norm[1]),
    }
    report["te"] = {m: _simple_block(scores, f"te_{m}", True) for m in ("strict", "relaxed")}
    for task, labels, pairs in (
        ("re", RELATION_TYPES, scores.re_pairs),
        ("uc", USAGE_STATUSES, scores.uc_pairs),
    ):
        report[task] = {
            "end_to_end": _label_block(scores, f"{task}_e2e", labels),
            "found_entities": _label_block(scores, f"{task}_found", labels),
            "confusion": _confusion(pairs, labels),
        }
    return report


def _unparseable(preds: Predictions, scores: SentenceScores) -> dict[str, int]:
    return {
        "ner": preds.unparseable_tasks["ner"],
        "te": preds.unparseable_tasks["te"],
        "re": sum(1 for _, p in scores.re_pairs if p == UNPARSEABLE),
        "uc": sum(1 for _, p in scores.uc_pairs if p == UNPARSEABLE),
    }
