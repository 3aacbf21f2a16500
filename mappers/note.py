"""What the mappers need to know about a source note, read from its DocumentReference."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mappers.errors import MappingError

_DOCREF = re.compile(r"(?:^|/)DocumentReference/([A-Za-z0-9.-]{1,64})(?:/_history/[^/]+)?$")


@dataclass(frozen=True)
class NoteContext:
    """The note's identity and clinical context (references copied onto every output)."""

    doc_id: str
    version_id: str
    subject: str
    encounter: str | None = None
    date: str | None = None
    text_path: str = "DocumentReference.content[0].attachment"

    @property
    def reference(self) -> str:
        """Versioned: outputs point at the exact note version they were derived from."""
        return f"DocumentReference/{self.doc_id}/_history/{self.version_id}"


def _literal(ref: object) -> str | None:
    """A literal reference string, or None (conditional or logical references are not copied)."""
    if isinstance(ref, dict):
        value = ref.get("reference")
        if isinstance(value, str) and value and "?" not in value and not value.startswith("#"):
            return value
    return None


def note_date(doc: Mapping[str, Any]) -> str | None:
    """When the note was written: ``date``, else ``context.period.start``."""
    if isinstance(doc.get("date"), str):
        return str(doc["date"])
    period = (doc.get("context") or {}).get("period") or {}
    start = period.get("start") if isinstance(period, dict) else None
    return start if isinstance(start, str) else None


def note_context(doc: Mapping[str, Any], text_path: str) -> NoteContext:
    """The context of a DocumentReference, or MappingError when it lacks id, version or subject."""
    doc_id = doc.get("id")
    version = (doc.get("meta") or {}).get("versionId")
    if not isinstance(doc_id, str) or not doc_id or not isinstance(version, str) or not version:
        raise MappingError("DocumentReference without id or meta.versionId")
    subject = _literal(doc.get("subject"))
    if subject is None:
        raise MappingError(f"DocumentReference/{doc_id} has no literal subject reference")
    encounters = (doc.get("context") or {}).get("encounter") or []
    encounter = _literal(encounters[0]) if isinstance(encounters, list) and encounters else None
    return NoteContext(doc_id, version, subject, encounter, note_date(doc), text_path)


def replaced_notes(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """Ids of DocumentReferences this one ``replaces`` (their outputs are retracted)."""
    out = []
    for rel in doc.get("relatesTo") or []:
        if not isinstance(rel, dict) or rel.get("code") != "replaces":
            continue
        match = _DOCREF.search(_literal(rel.get("target")) or "")
        if match:
            out.append(match.group(1))
    return tuple(out)
