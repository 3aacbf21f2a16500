"""Counts that describe a corpus: label balance per task, coverage, sections."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from extraction.corpus import RELATION_TYPES, USAGE_STATUSES, Record


def re_pairs(record: Record) -> list[tuple[str, str, str]]:
    """Every (supplement id, event id, label) RE pair; unlisted pairs are not_related."""
    listed = {(r.head, r.tail): r.type for r in record.relations}
    return [
        (s.id, e.id, listed.get((s.id, e.id)) or "not_related")
        for s in record.supplements
        for e in record.events
    ]


@dataclass
class CorpusStats:
    records: int = 0
    no_supplement: int = 0
    multi_supplement: int = 0
    entity_types: Counter[str] = field(default_factory=Counter)
    normalized: Counter[str] = field(default_factory=Counter)
    usage: Counter[str] = field(default_factory=Counter)
    relations: Counter[str] = field(default_factory=Counter)
    triples: int = 0
    sections: Counter[str] = field(default_factory=Counter)
    specialties: Counter[str] = field(default_factory=Counter)

    @staticmethod
    def share(counter: Counter[str], labels: Iterable[str]) -> dict[str, float]:
        total = sum(counter.values()) or 1
        return {lab: counter[lab] / total for lab in labels}

    def as_dict(self) -> dict[str, object]:
        n = self.records or 1
        return {
            "records": self.records,
            "no_supplement_share": round(self.no_supplement / n, 3),
            "multi_supplement_share": round(self.multi_supplement / n, 3),
            "entities": dict(self.entity_types),
            "distinct_normalized": len(self.normalized),
            "usage": dict(self.usage),
            "usage_share": {
                k: round(v, 3) for k, v in self.share(self.usage, USAGE_STATUSES).items()
            },
            "relation_pairs": dict(self.relations),
            "relation_share": {
                k: round(v, 3) for k, v in self.share(self.relations, RELATION_TYPES).items()
            },
            "te_triples": self.triples,
            "sections": dict(self.sections.most_common()),
            "specialties": dict(self.specialties.most_common()),
            "top_normalized": dict(self.normalized.most_common(25)),
        }


def compute_stats(records: Iterable[Record]) -> CorpusStats:
    st = CorpusStats()
    for rec in records:
        st.records += 1
        n_supp = len(rec.supplements)
        st.no_supplement += n_supp == 0
        st.multi_supplement += n_supp >= 2
        st.entity_types.update(e.type for e in rec.entities)
        st.normalized.update(e.normalized or e.text.lower() for e in rec.supplements)
        st.usage.update(u.status or "unparseable" for u in rec.usage)
        st.relations.update(label for _, _, label in re_pairs(rec))
        st.triples += sum(r.type in ("indication", "adverse_event") for r in rec.relations)
        st.sections[str(rec.extra.get("section", "?"))] += 1
        st.specialties[str(rec.extra.get("specialty", "?"))] += 1
    return st
