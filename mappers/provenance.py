"""One Provenance per (note version, engine): targets, the engine as a contained Device, the note.

R4 Provenance has no ``identifier``; its deterministic key travels as a ``meta.tag`` so the
write can be a conditional create on ``_tag``. The Device is contained, so no Device write
(and no Device scope) is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.provenance import Provenance
from pydantic import ValidationError

from extraction.api import EngineInfo
from mappers.errors import MappingError
from mappers.note import NoteContext
from mappers.terminology import PROVENANCE_AGENT_TYPE


def engine_device(engine: EngineInfo, software: str) -> dict[str, Any]:
    """A Device naming the software version, extraction backend, base model and adapter."""
    versions = [
        ("software", software),
        ("engine", f"{engine.backend} {engine.software_version}"),
        ("task", engine.task_version),
        ("base-model", engine.base_model),
        ("adapter", engine.adapter),
        ("options", engine.options),
    ]
    return {
        "resourceType": "Device",
        "id": "engine",
        "deviceName": [
            {"name": f"dsfhir {engine.backend} extractor", "type": "user-friendly-name"}
        ],
        "type": {"text": "Clinical NLP extraction software (dietary supplements)"},
        "version": [{"type": {"text": kind}, "value": value} for kind, value in versions if value],
    }


def provenance(
    note: NoteContext,
    targets: Sequence[str],
    engine: EngineInfo,
    software: str,
    recorded: str,
    tag: tuple[str, str],
) -> Provenance:
    """Provenance of everything written for one note version; ``tag`` = (system, key)."""
    if not targets:
        raise MappingError(f"Provenance for {note.reference} needs at least one target")
    body: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": tag[0], "code": tag[1]}]},
        "contained": [engine_device(engine, software)],
        "target": [{"reference": t} for t in targets],
        "recorded": recorded,
        "activity": {"text": "dietary-supplement extraction from a clinical note"},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_AGENT_TYPE, "code": "assembler"}]},
                "who": {"reference": "#engine"},
            }
        ],
        "entity": [{"role": "source", "what": {"reference": note.reference}}],
    }
    try:
        return Provenance.model_validate(body)
    except ValidationError as exc:
        raise MappingError(f"Provenance for {note.reference} is invalid: {exc}") from exc
