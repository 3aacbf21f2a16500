"""One Observation per adverse-event fact: supplement -> event, focused on the statement."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from extraction.api import NoteFact
from mappers.errors import MappingError
from mappers.evidence import ai_meta, derivations, identifier
from mappers.note import NoteContext
from mappers.terminology import RELATION_CODES, RELATION_SYSTEM


def fact_observation(
    note: NoteContext, fact: NoteFact, statement_ref: str, system: str, key: str
) -> Observation:
    """``preliminary`` (unreviewed AI output); ``focus`` is the supplement's MedicationStatement."""
    try:
        code, display = RELATION_CODES[fact.relation]
    except KeyError:
        raise MappingError(f"no Observation code for relation {fact.relation!r}") from None
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": ai_meta(),
        "extension": derivations(note, [fact.supplement_span, fact.event_span]),
        "identifier": [identifier(system, key)],
        "status": "preliminary",
        "code": {
            "coding": [{"system": RELATION_SYSTEM, "code": code, "display": display}],
            "text": display,
        },
        "subject": {"reference": note.subject},
        "focus": [{"reference": statement_ref, "display": fact.supplement}],
        "valueCodeableConcept": {"text": fact.event.strip()},
        "derivedFrom": [{"reference": note.reference}],
    }
    if note.encounter:
        body["encounter"] = {"reference": note.encounter}
    if note.date:
        body["effectiveDateTime"] = note.date
    try:
        return Observation.model_validate(body)
    except ValidationError as exc:
        raise MappingError(f"Observation for {note.reference} is invalid: {exc}") from exc
