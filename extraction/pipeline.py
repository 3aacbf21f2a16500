"""The note pipeline shared by every backend: check, split, predict per sentence, merge, aggregate.

A backend only implements :class:`SentenceBackend` (sentences in, per-sentence records out);
this module turns that into the :class:`~extraction.api.Extractor` interface, with offsets
shifted back into the note and note-level lists built per guidelines §7.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from extraction.aggregate import aggregate
from extraction.api import EngineInfo, NoteExtraction
from extraction.corpus import RELATION_TYPES, USAGE_STATUSES, Entity, Record, Relation, Usage
from extraction.sentences import Sentence, check_text, split_sentences
from extraction.status_rules import apply_dose_changes, apply_list_headers

log = logging.getLogger(__name__)


@dataclass
class SentenceResult:
    """One sentence's prediction (offsets into the sentence) plus failure counts."""

    record: Record
    unparseable: Counter[str] = field(default_factory=Counter)
    dropped_spans: int = 0


# RE/UC labels for a batch of sentences, by sentence index (see extraction.hybrid.Classifier).
Labels = tuple[dict[int, list[Usage]], dict[int, list[Relation]]]


@dataclass
class LabelScores:
    """One sentence's label probabilities: per supplement id over USAGE_STATUSES, per
    (supplement id, event id) over RELATION_TYPES (the order of extraction.corpus)."""

    usage: dict[str, list[float]] = field(default_factory=dict)
    relations: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def labels_from_scores(scores: dict[int, LabelScores]) -> Labels:
    """The most probable label of each item; ``not_related`` pairs are left out."""

    def best(probs: list[float]) -> int:
        return max(range(len(probs)), key=probs.__getitem__)

    usage: dict[int, list[Usage]] = {}
    rels: dict[int, list[Relation]] = {}
    for i, sc in scores.items():
        usage[i] = [Usage(sup, USAGE_STATUSES[best(p)]) for sup, p in sc.usage.items()]
        rels[i] = [
            Relation(sup, ev, RELATION_TYPES[k])
            for (sup, ev), p in sc.relations.items()
            if RELATION_TYPES[k := best(p)] != "not_related"
        ]
    return usage, rels


class SentenceBackend(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]: ...


def _shift(result: SentenceResult, sent: Sentence, prefix: str) -> Record:
    rec = result.record
    ids = {e.id: f"{prefix}{e.id}" for e in rec.entities}
    ents = tuple(
        Entity(ids[e.id], e.type, e.start + sent.start, e.end + sent.start, e.text, e.normalized)
        for e in rec.entities
    )
    rels = tuple(Relation(ids[r.head], ids[r.tail], r.type) for r in rec.relations)
    usage = tuple(Usage(ids[u.entity], u.status) for u in rec.usage)
    return Record(rec.id, rec.text, ents, rels, usage)


def merge(
    record_id: str, text: str, sentences: Sequence[Sentence], results: Sequence[SentenceResult]
) -> Record:
    """One record over the whole text from per-sentence records (entity ids made unique)."""
    ents: list[Entity] = []
    rels: list[Relation] = []
    usage: list[Usage] = []
    for i, (sent, res) in enumerate(zip(sentences, results, strict=True)):
        shifted = _shift(res, sent, f"S{i}.")
        ents += shifted.entities
        rels += shifted.relations
        usage += shifted.usage
    return Record(record_id, text, tuple(ents), tuple(rels), tuple(usage))


class NotePipeline:
    """An :class:`~extraction.api.Extractor` built on a sentence backend. ``status_rules``
    applies :mod:`extraction.status_rules` (list headers, dose changes) to every note."""

    def __init__(
        self,
        backend: SentenceBackend,
        max_sentence_chars: int = 600,
        max_note_chars: int = 200_000,
        status_rules: bool = False,
        options: str = "",
    ) -> None:
        """``options``: the caller's description of the switches in force, reported in
        :attr:`info` (for provenance)."""
        self.backend = backend
        self.max_sentence_chars = max_sentence_chars
        self.max_note_chars = max_note_chars
        self.status_rules = status_rules
        self.options = options

    @property
    def info(self) -> EngineInfo:
        info = self.backend.info
        return replace(info, options=self.options) if self.options else info

    def extract(self, texts: Sequence[str]) -> list[NoteExtraction]:
        """Extract each text; raises ValueError naming the index of an unusable text."""
        prepared = []
        for i, raw in enumerate(texts):
            try:
                text, truncated = check_text(raw, self.max_note_chars)
            except ValueError as exc:
                raise ValueError(f"input {i}: {exc}") from exc
            prepared.append((text, truncated, split_sentences(text, self.max_sentence_chars)))
        flat = [s.text for _, _, sents in prepared for s in sents]
        results = self.backend.predict(flat) if flat else []
        out = []
        pos = 0
        for text, truncated, sents in prepared:
            chunk = results[pos : pos + len(sents)]
            pos += len(sents)
            out.append(self._assemble(text, truncated, sents, chunk))
        return out

    def _assemble(
        self, text: str, truncated: bool, sents: list[Sentence], chunk: Sequence[SentenceResult]
    ) -> NoteExtraction:
        record = merge("note", text, sents, chunk)
        if self.status_rules:
            record = apply_list_headers(apply_dose_changes(record))
        supplements, facts = aggregate(record)
        unparseable: Counter[str] = Counter()
        for res in chunk:
            unparseable.update(res.unparseable)
        return NoteExtraction(
            record=record,
            supplements=supplements,
            facts=facts,
            sentences=len(sents),
            unparseable=dict(unparseable),
            dropped_spans=sum(r.dropped_spans for r in chunk),
            truncated=truncated,
        )
