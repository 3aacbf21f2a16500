"""Note-level scoring: the supplement list a clinician sees, with status, and relation facts.

Gold records: ``{"id", "text", "expected_supplements": [{"normalized", "status"}],
"expected_relations": [{"supplement", "relation", "event"}]}`` (guidelines §7).
Predictions: ``{"id", "supplements": [{"normalized", "status"}], "facts": [{"supplement",
"relation", "event"}]}``. Names compare case-insensitively; a fact matches when the
supplement and relation are equal and the event texts overlap (share a content word, or
one contains the other), one-to-one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from extraction.errors import CorpusError
from extraction.metrics import PRF, bootstrap_ci, f1_from_counts, matching_pairs

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset({"and", "the", "with", "for", "from", "of", "in", "on", "to", "or", "a", "an"})

Fact = tuple[str, str, str]


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def events_overlap(a: str, b: str) -> bool:
    """Lenient, case-insensitive event-text match (guidelines §7)."""
    la, lb = a.strip().lower(), b.strip().lower()
    if not la or not lb:
        return False
    return la in lb or lb in la or bool(_words(la) & _words(lb))


def _norm(name: object) -> str:
    return str(name or "").strip().lower()


def _supplements(items: Any) -> set[tuple[str, str]]:
    return {(_norm(i.get("normalized")), _norm(i.get("status"))) for i in items or []}


def _facts(items: Any) -> list[Fact]:
    facts = {
        (_norm(i.get("supplement")), _norm(i.get("relation")), str(i.get("event", "")).strip())
        for i in items or []
    }
    return sorted(facts)


def load_gold_notes(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(str(path), lineno, None, f"invalid JSON ({exc.msg})") from exc
        rid = obj.get("id")
        if not isinstance(rid, str) or "expected_supplements" not in obj:
            raise CorpusError(str(path), lineno, rid, "not a gold note (id, expected_supplements)")
        if rid in out:
            raise CorpusError(str(path), lineno, rid, "duplicate record id")
        out[rid] = obj
    return out


def _load_pred_notes(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    out: dict[str, dict[str, Any]] = {}
    invalid = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out[str(obj["id"])] = obj
        except (json.JSONDecodeError, KeyError, TypeError):
            invalid += 1
    return out, invalid


def _note_rows(gold: dict[str, Any], pred: dict[str, Any] | None) -> list[int]:
    gs = _supplements(gold.get("expected_supplements"))
    # A gold file given as predictions (self-check) uses the expected_* keys.
    ps = _supplements(pred.get("supplements", pred.get("expected_supplements"))) if pred else set()
    gn, pn = {n for n, _ in gs}, {n for n, _ in ps}
    gf = _facts(gold.get("expected_relations"))
    pf = _facts(pred.get("facts", pred.get("expected_relations"))) if pred else []

    def same(a: Fact, b: Fact) -> bool:
        return a[0] == b[0] and a[1] == b[1] and events_overlap(a[2], b[2])

    fact_tp = len(matching_pairs(gf, pf, same))
    name_tp, both_tp = len(gn & pn), len(gs & ps)
    return [
        name_tp, len(pn) - name_tp, len(gn) - name_tp,
        both_tp, len(ps) - both_tp, len(gs) - both_tp,
        fact_tp, len(pf) - fact_tp, len(gf) - fact_tp,
    ]  # fmt: skip


def score_notes(gold_path: Path, pred_path: Path) -> dict[str, Any]:
    gold = load_gold_notes(gold_path)
    preds, invalid = _load_pred_notes(pred_path)
    rows = np.array([_note_rows(g, preds.get(i)) for i, g in gold.items()], dtype=float)
    report: dict[str, Any] = {
        "notes": len(gold),
        "missing_predictions": sum(1 for i in gold if i not in preds),
        "invalid_prediction_lines": invalid,
    }
    for offset, name in ((0, "supplements"), (3, "supplements_with_status"), (6, "facts")):
        block = rows[:, offset : offset + 3]
        tp, fp, fn = (int(x) for x in block.sum(axis=0))
        entry: dict[str, Any] = PRF(tp, fp, fn).as_dict()
        entry["f1_ci95"] = bootstrap_ci(block, lambda c: f1_from_counts(*c))
        report[name] = entry
    return report
