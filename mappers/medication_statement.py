"""One MedicationStatement per (note, normalised supplement)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.medicationstatement import MedicationStatement
from pydantic import ValidationError

from extraction.api import NoteFact, NoteSupplement
from mappers.errors import MappingError
from mappers.evidence import ai_meta, derivations, identifier
from mappers.note import NoteContext
from mappers.terminology import RXNORM, UNII, SupplementCodes, statement_status

_NOTES = {
    "intended": "Recommended or planned in the note; not confirmed as taken.",
    "not-taken": "The note records that the patient does not take this supplement.",
    "unknown": "The note does not make clear whether the patient takes this supplement.",
}


def _medication(name: str, codes: SupplementCodes | None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": name}
    coding = []
    if codes and codes.rxcui:
        coding.append({"system": RXNORM, "code": codes.rxcui, "display": name})
    if codes and codes.unii:
        coding.append({"system": UNII, "code": codes.unii, "display": name})
    if coding:
        concept["coding"] = coding
    return concept


def _reasons(facts: Sequence[NoteFact]) -> list[dict[str, str]]:
    seen: dict[str, str] = {}
    for fact in facts:
        seen.setdefault(" ".join(fact.event.lower().split()), fact.event.strip())
    return [{"text": text} for text in seen.values()]


def medication_statement(
    note: NoteContext,
    supplement: NoteSupplement,
    indications: Sequence[NoteFact],
    codes: SupplementCodes | None,
    system: str,
    key: str,
) -> MedicationStatement:
    """The statement for one supplement; ``indications`` become ``reasonCode``."""
    status = statement_status(supplement.status, supplement.status_detail)
    spans = list(supplement.mentions) + [f.supplement_span for f in indications]
    body: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "meta": ai_meta(),
        "extension": derivations(note, spans),
        "identifier": [identifier(system, key)],
        "status": status,
        "medicationCodeableConcept": _medication(supplement.normalized, codes),
        "subject": {"reference": note.subject},
        "derivedFrom": [{"reference": note.reference}],
    }
    if note.encounter:
        body["context"] = {"reference": note.encounter}
    if note.date:
        body["dateAsserted"] = note.date
    if indications:
        body["reasonCode"] = _reasons(indications)
    if status in _NOTES:
        body["note"] = [{"text": _NOTES[status]}]
    try:
        return MedicationStatement.model_validate(body)
    except ValidationError as exc:
        raise MappingError(f"MedicationStatement for {note.reference} is invalid: {exc}") from exc
