"""The narrow interface between extraction and the rest of the product.

The FHIR adapter hands note text in and gets a :class:`NoteExtraction` out; it never sees
prompts, models or retrieval. Every backend (LLM, encoder, lexicon rules) implements
:class:`Extractor`. Offsets are character offsets into the text given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from extraction.corpus import Record

# Refines a note-level status for consumers that must tell a taken supplement from a
# suggested one (FHIR: start+planned -> "intended", discontinue+denied -> "not-taken").
StatusDetail = Literal["started", "planned", "stopped", "denied"]


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@dataclass(frozen=True)
class NoteSupplement:
    """One distinct normalised supplement of a note, with its status at the end of the note."""

    normalized: str
    status: str
    status_detail: StatusDetail | None
    mentions: tuple[Span, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class NoteFact:
    """One distinct (supplement, relation, event) fact of a note (relation != not_related)."""

    supplement: str
    relation: str
    event: str
    supplement_span: Span
    event_span: Span


@dataclass(frozen=True)
class EngineInfo:
    """What produced a result: stamped into provenance and idempotency keys."""

    backend: str
    software_version: str
    task_version: str
    base_model: str
    adapter: str
    # The pipeline switches in force (floors, rules, TE mode): same weights, other switches,
    # other results. Stamped into provenance, not into idempotency keys.
    options: str = ""


@dataclass(frozen=True)
class NoteExtraction:
    """Everything extracted from one text."""

    record: Record  # entities / relations / usage over the whole text
    supplements: tuple[NoteSupplement, ...]
    facts: tuple[NoteFact, ...]
    sentences: int
    unparseable: dict[str, int] = field(default_factory=dict)
    dropped_spans: int = 0
    truncated: bool = False

    def to_json(self) -> dict[str, object]:
        out = self.record.to_json()
        out["supplements"] = [
            {"normalized": s.normalized, "status": s.status, "status_detail": s.status_detail}
            for s in self.supplements
        ]
        out["facts"] = [
            {"supplement": f.supplement, "relation": f.relation, "event": f.event}
            for f in self.facts
        ]
        out["unparseable"] = sorted(k for k, v in self.unparseable.items() if v)
        out["unparseable_counts"] = dict(self.unparseable)
        out["dropped_spans"] = self.dropped_spans
        out["truncated"] = self.truncated
        return out


class Extractor(Protocol):
    """A backend: texts in, one result per text out (same order)."""

    @property
    def info(self) -> EngineInfo: ...

    def extract(self, texts: Sequence[str]) -> list[NoteExtraction]: ...
