"""Evidence and labels shared by the mappers: AI-asserted meta and derivation-reference spans."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from extraction.api import Span
from mappers.note import NoteContext
from mappers.terminology import AI_ASSERTED, DERIVATION_REFERENCE


def ai_meta() -> dict[str, Any]:
    return {"security": [dict(AI_ASSERTED)]}


def derivation_reference(note: NoteContext, span: Span) -> dict[str, Any]:
    """The Extensions Pack ``derivation-reference``: where in the note the evidence is.

    ``offset``/``length`` count characters of the note text as the adapter read it
    (the decoded attachment named by ``path``; HTML notes: their plain-text rendering).
    """
    return {
        "url": DERIVATION_REFERENCE,
        "extension": [
            {"url": "reference", "valueReference": {"reference": note.reference}},
            {"url": "path", "valueString": note.text_path},
            {"url": "offset", "valueInteger": span.start},
            {"url": "length", "valueInteger": span.end - span.start},
        ],
    }


def derivations(note: NoteContext, spans: Iterable[Span]) -> list[dict[str, Any]]:
    """One extension per distinct span, in text order."""
    unique = sorted({(s.start, s.end) for s in spans})
    return [derivation_reference(note, Span(a, b)) for a, b in unique]


def identifier(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}
