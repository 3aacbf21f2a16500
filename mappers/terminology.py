"""Code systems, labels and the usage-status mapping used by every mapper.

Status mapping (note-level usage + detail -> R4 ``MedicationStatement.status``)::

    continue                 -> active     still being taken
    start    + started       -> active     the note says it was started
    start    + planned       -> intended   only recommended / planned: never shown as taken
    start    (no detail)     -> unknown    an engine without the split: claim nothing
    discontinue + stopped    -> stopped
    discontinue + denied     -> not-taken  a named supplement the patient denies taking
    discontinue (no detail)  -> stopped
    uncertain                -> unknown
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mappers.errors import MappingError

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UNII = "http://fdasis.nlm.nih.gov"
DERIVATION_REFERENCE = "http://hl7.org/fhir/StructureDefinition/derivation-reference"
# HL7 AI Transparency on FHIR: "AI asserted" security label on every AI-derived resource.
AI_ASSERTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
# Local CodeSystem for Observation.code of supplement relation facts (documented in README).
RELATION_SYSTEM = "urn:dsfhir:codesystem:supplement-relation"
RELATION_CODES = {
    "adverse_event": ("adverse-event", "Adverse event attributed to a dietary supplement"),
    "indication": ("indication", "Dietary supplement taken for an indication"),
}
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

_STATUS: dict[tuple[str, str | None], str] = {
    ("continue", None): "active",
    ("start", "started"): "active",
    ("start", "planned"): "intended",
    ("start", None): "unknown",
    ("discontinue", "stopped"): "stopped",
    ("discontinue", "denied"): "not-taken",
    ("discontinue", None): "stopped",
    ("uncertain", None): "unknown",
}


def statement_status(status: str, detail: str | None) -> str:
    """The R4 MedicationStatement.status for a note-level usage status and its detail."""
    key = (status, detail if status in ("start", "discontinue") else None)
    try:
        return _STATUS[key]
    except KeyError:
        raise MappingError(f"no MedicationStatement status for usage {status}/{detail}") from None


@dataclass(frozen=True)
class SupplementCodes:
    """Public codes of a normalised supplement, from the lexicon ('' = none known)."""

    rxcui: str = ""
    unii: str = ""


# normalised supplement name -> its codes (None when the lexicon does not know it)
CodeLookup = Callable[[str], SupplementCodes | None]


def no_codes(name: str) -> SupplementCodes | None:
    return None
