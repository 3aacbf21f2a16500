"""Deterministic identifiers: the same note, supplement and task version always give the same key.

Offsets and the note version are deliberately left out of output keys, so an amended note
updates its outputs instead of duplicating them; the Provenance key includes the version
because each note version gets its own Provenance.
"""

from __future__ import annotations

import hashlib
import uuid

_SEP = "\x1f"
_URN_NAMESPACE = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")


def stable_key(*parts: str) -> str:
    return hashlib.sha256(_SEP.join(parts).encode("utf-8")).hexdigest()


def statement_key(doc_id: str, supplement: str, task_version: str) -> str:
    return stable_key("MedicationStatement", doc_id, supplement.lower(), task_version)


def observation_key(
    doc_id: str, supplement: str, relation: str, event: str, task_version: str
) -> str:
    event_norm = " ".join(event.lower().split())
    return stable_key("Observation", doc_id, supplement.lower(), relation, event_norm, task_version)


def provenance_key(doc_id: str, version_id: str, task_version: str) -> str:
    return stable_key("Provenance", doc_id, version_id, task_version)


def full_url(key: str) -> str:
    """A stable ``urn:uuid`` for a bundle entry, so a re-built Bundle is byte-identical."""
    return f"urn:uuid:{uuid.uuid5(_URN_NAMESPACE, key)}"
