"""One transaction Bundle per note: statements, adverse-event observations, retractions, Provenance.

Every entry is conditional, so the whole transaction is idempotent and safe to retry:

* first sight of a note: ``POST`` with ``ifNoneExist=identifier=<system>|<key>``;
* a new version of a note already written (``replace``): ``PUT <Type>?identifier=...``, so
  the same resources are updated in place;
* outputs of the old version that the new one no longer supports (or of a note that was
  replaced / entered in error) are ``PUT`` back with ``status = entered-in-error``;
* the Provenance is a conditional create on its ``_tag`` key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from extraction.api import EngineInfo, NoteFact, NoteSupplement
from mappers.errors import MappingError
from mappers.identifiers import full_url, observation_key, provenance_key, statement_key
from mappers.medication_statement import medication_statement
from mappers.note import NoteContext
from mappers.observation import fact_observation
from mappers.provenance import provenance
from mappers.terminology import CodeLookup, no_codes

Action = Literal["create", "update", "retract", "provenance"]


@dataclass(frozen=True)
class BundleOptions:
    system: str
    software: str
    recorded: str
    replace: bool = False
    codes: CodeLookup = no_codes


@dataclass(frozen=True)
class Retraction:
    """A resource written earlier for this note (its last body) that must be withdrawn."""

    resource_type: str
    key: str
    resource: Mapping[str, Any]


@dataclass(frozen=True)
class PlannedEntry:
    resource_type: str
    key: str
    action: Action
    resource: dict[str, Any]
    supplement: str | None = None


@dataclass(frozen=True)
class NoteBundle:
    bundle: dict[str, Any]
    entries: tuple[PlannedEntry, ...] = field(default_factory=tuple)


def _json(resource: Resource) -> dict[str, Any]:
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True)


def _request(resource_type: str, query: str, replace: bool) -> dict[str, str]:
    if replace:
        return {"method": "PUT", "url": f"{resource_type}?{query}"}
    return {"method": "POST", "url": resource_type, "ifNoneExist": query}


def _outputs(
    note: NoteContext,
    supplements: Sequence[NoteSupplement],
    facts: Sequence[NoteFact],
    engine: EngineInfo,
    opts: BundleOptions,
) -> list[PlannedEntry]:
    action: Action = "update" if opts.replace else "create"
    refs: dict[str, str] = {}
    out = []
    for supp in supplements:
        key = statement_key(note.doc_id, supp.normalized, engine.task_version)
        refs[supp.normalized] = full_url(key)
        reasons = [
            f for f in facts if f.supplement == supp.normalized and f.relation == "indication"
        ]
        ms = medication_statement(
            note, supp, reasons, opts.codes(supp.normalized), opts.system, key
        )
        out.append(PlannedEntry("MedicationStatement", key, action, _json(ms), supp.normalized))
    for fact in facts:
        if fact.relation != "adverse_event":
            continue
        if fact.supplement not in refs:
            raise MappingError(f"{note.reference}: a fact names unknown supplement")
        key = observation_key(
            note.doc_id, fact.supplement, fact.relation, fact.event, engine.task_version
        )
        obs = fact_observation(note, fact, refs[fact.supplement], opts.system, key)
        out.append(PlannedEntry("Observation", key, action, _json(obs), fact.supplement))
    return out


def _retracted(retraction: Retraction) -> PlannedEntry:
    body = copy.deepcopy(dict(retraction.resource))
    body.pop("id", None)
    meta = body.get("meta")
    if isinstance(meta, dict):
        for server_owned in ("versionId", "lastUpdated"):
            meta.pop(server_owned, None)
    body["status"] = "entered-in-error"
    return PlannedEntry(retraction.resource_type, retraction.key, "retract", body)


def _entry(item: PlannedEntry, system: str) -> dict[str, Any]:
    query = urlencode({"identifier": f"{system}|{item.key}"})
    return {
        "fullUrl": full_url(item.key),
        "resource": item.resource,
        "request": _request(item.resource_type, query, item.action != "create"),
    }


def _provenance_entry(
    note: NoteContext, targets: list[str], engine: EngineInfo, opts: BundleOptions
) -> tuple[dict[str, Any], PlannedEntry]:
    key = provenance_key(note.doc_id, note.version_id, engine.task_version)
    prov = _json(
        provenance(note, targets, engine, opts.software, opts.recorded, (opts.system, key))
    )
    entry = {
        "fullUrl": full_url(key),
        "resource": prov,
        "request": _request("Provenance", urlencode({"_tag": f"{opts.system}|{key}"}), False),
    }
    return entry, PlannedEntry("Provenance", key, "provenance", prov)


def note_bundle(
    note: NoteContext,
    supplements: Sequence[NoteSupplement],
    facts: Sequence[NoteFact],
    engine: EngineInfo,
    opts: BundleOptions,
    retractions: Sequence[Retraction] = (),
) -> NoteBundle | None:
    """The validated transaction for one note version, or None when there is nothing to write."""
    planned = _outputs(note, supplements, facts, engine, opts)
    written = {(p.resource_type, p.key) for p in planned}
    planned += [_retracted(r) for r in retractions if (r.resource_type, r.key) not in written]
    if not planned:
        return None
    entries = [_entry(item, opts.system) for item in planned]
    prov_entry, prov_planned = _provenance_entry(
        note, [e["fullUrl"] for e in entries], engine, opts
    )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [*entries, prov_entry]}
    return NoteBundle(_validated(bundle), (*planned, prov_planned))


def _validated(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle, checked entry by entry with fhir.resources R4B before it is sent."""
    try:
        return _json(Bundle.model_validate(bundle))
    except ValidationError as exc:
        raise MappingError(f"transaction Bundle is invalid: {exc}") from exc
