"""Mappers: pure functions from extraction results to R4 resources, each validated with R4B."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance

from extraction.api import EngineInfo, NoteFact, NoteSupplement, Span
from mappers.bundle import BundleOptions, Retraction, note_bundle
from mappers.errors import MappingError
from mappers.identifiers import full_url, statement_key
from mappers.medication_statement import medication_statement
from mappers.note import NoteContext, note_context, replaced_notes
from mappers.observation import fact_observation
from mappers.provenance import provenance
from mappers.terminology import RXNORM, UNII, SupplementCodes, statement_status

SYSTEM = "urn:dsfhir:extraction"
ENGINE = EngineInfo("llm", "0.1.0", "tasks-v1", "SmolLM2-135M-Instruct", "ramie@abc123")
NOTE = NoteContext(
    "doc1", "3", "Patient/p1", "Encounter/e1", "2025-03-01T10:00:00Z",
    "DocumentReference.content[0].attachment",
)  # fmt: skip
FISH = NoteSupplement("fish oil", "continue", None, (Span(10, 18), Span(40, 48)), ("fish oil",))
GINKGO = NoteSupplement("ginkgo", "discontinue", "stopped", (Span(60, 66),), ("ginkgo",))
PAIN = NoteFact("fish oil", "indication", "joint pain", Span(10, 18), Span(23, 33))
BRUISE = NoteFact("ginkgo", "adverse_event", "Bruising", Span(60, 66), Span(74, 82))


@pytest.mark.parametrize(
    ("status", "detail", "expected"),
    [
        ("continue", None, "active"),
        ("start", "started", "active"),
        ("start", "planned", "intended"),
        ("start", None, "unknown"),
        ("discontinue", "stopped", "stopped"),
        ("discontinue", "denied", "not-taken"),
        ("discontinue", None, "stopped"),
        ("uncertain", None, "unknown"),
        ("uncertain", "planned", "unknown"),  # a detail only refines start/discontinue
    ],
)
def test_usage_status_maps_to_r4_statement_status(
    status: str, detail: str | None, expected: str
) -> None:
    assert statement_status(status, detail) == expected


def test_an_unknown_usage_status_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match="recorded"):
        statement_status("recorded", None)


def ext_values(ext: dict[str, Any]) -> dict[str, Any]:
    return {e["url"]: next(v for k, v in e.items() if k != "url") for e in ext["extension"]}


def test_medication_statement_carries_codes_evidence_and_the_ai_label() -> None:
    key = statement_key("doc1", "fish oil", ENGINE.task_version)
    ms = medication_statement(NOTE, FISH, [PAIN], SupplementCodes("8888", "UNII1"), SYSTEM, key)
    body = ms.model_dump(mode="json", exclude_none=True)
    MedicationStatement.model_validate(body)
    assert body["status"] == "active"
    assert body["medicationCodeableConcept"] == {
        "text": "fish oil",
        "coding": [
            {"system": RXNORM, "code": "8888", "display": "fish oil"},
            {"system": UNII, "code": "UNII1", "display": "fish oil"},
        ],
    }
    assert body["identifier"] == [{"system": SYSTEM, "value": key}]
    assert body["subject"] == {"reference": "Patient/p1"}
    assert body["context"] == {"reference": "Encounter/e1"}
    assert body["derivedFrom"] == [{"reference": "DocumentReference/doc1/_history/3"}]
    assert body["reasonCode"] == [{"text": "joint pain"}]
    assert body["meta"]["security"][0]["code"] == "AIAST"
    spans = [ext_values(e) for e in body["extension"]]
    assert [(s["offset"], s["length"]) for s in spans] == [(10, 8), (40, 8)]
    assert spans[0]["reference"] == {"reference": "DocumentReference/doc1/_history/3"}
    assert "note" not in body  # an active statement needs no caveat


def test_codings_only_from_the_lexicon_and_a_caveat_on_non_taken_statuses() -> None:
    planned = NoteSupplement("ashwagandha", "start", "planned", (Span(0, 11),), ("ashwagandha",))
    bare = NoteContext("doc2", "1", "Patient/p2")
    body = medication_statement(bare, planned, [], None, SYSTEM, "k").model_dump(
        mode="json", exclude_none=True
    )
    assert body["status"] == "intended"
    assert body["medicationCodeableConcept"] == {"text": "ashwagandha"}
    assert "not confirmed as taken" in body["note"][0]["text"]
    assert "context" not in body and "dateAsserted" not in body


def test_adverse_event_observation_focuses_the_statement() -> None:
    obs = fact_observation(NOTE, BRUISE, "urn:uuid:x", SYSTEM, "obskey")
    body = obs.model_dump(mode="json", exclude_none=True)
    Observation.model_validate(body)
    assert body["status"] == "preliminary"
    assert body["code"]["coding"][0] == {
        "system": "urn:dsfhir:codesystem:supplement-relation",
        "code": "adverse-event",
        "display": "Adverse event attributed to a dietary supplement",
    }
    assert body["focus"] == [{"reference": "urn:uuid:x", "display": "ginkgo"}]
    assert body["valueCodeableConcept"] == {"text": "Bruising"}
    assert body["derivedFrom"] == [{"reference": "DocumentReference/doc1/_history/3"}]
    assert [ext_values(e)["offset"] for e in body["extension"]] == [60, 74]
    with pytest.raises(MappingError, match="not_related"):
        fact_observation(
            NOTE, NoteFact("x", "not_related", "y", Span(0, 1), Span(2, 3)), "u", "s", "k"
        )


def test_provenance_names_the_engine_in_a_contained_device() -> None:
    engine = dataclasses.replace(ENGINE, options="lexicon-floor+status-rules")
    prov = provenance(
        NOTE, ["urn:uuid:a"], engine, "dsfhir 0.1.0", "2025-03-02T00:00:00Z", (SYSTEM, "pk")
    )
    body = prov.model_dump(mode="json", exclude_none=True)
    Provenance.model_validate(body)
    device = body["contained"][0]
    assert body["agent"][0]["who"] == {"reference": "#engine"}
    assert device["id"] == "engine"
    versions = {v["type"]["text"]: v["value"] for v in device["version"]}
    assert versions == {
        "software": "dsfhir 0.1.0",
        "engine": "llm 0.1.0",
        "task": "tasks-v1",
        "base-model": "SmolLM2-135M-Instruct",
        "adapter": "ramie@abc123",
        "options": "lexicon-floor+status-rules",
    }
    assert body["entity"] == [
        {"role": "source", "what": {"reference": "DocumentReference/doc1/_history/3"}}
    ]
    assert body["meta"]["tag"] == [{"system": SYSTEM, "code": "pk"}]
    with pytest.raises(MappingError, match="at least one target"):
        provenance(NOTE, [], ENGINE, "x", "2025-03-02T00:00:00Z", (SYSTEM, "pk"))


def opts(replace: bool = False) -> BundleOptions:
    codes = {"fish oil": SupplementCodes(rxcui="8888")}
    return BundleOptions(SYSTEM, "dsfhir", "2025-03-02T00:00:00Z", replace, codes.get)


def test_first_sight_bundle_is_all_conditional_creates() -> None:
    nb = note_bundle(NOTE, [FISH, GINKGO], [PAIN, BRUISE], ENGINE, opts())
    assert nb is not None
    Bundle.model_validate(nb.bundle)
    entries = nb.bundle["entry"]
    kinds = [e["resource"]["resourceType"] for e in entries]
    assert kinds == ["MedicationStatement", "MedicationStatement", "Observation", "Provenance"]
    for entry in entries:
        assert entry["request"]["method"] == "POST"
        ((name, value),) = parse_qsl(entry["request"]["ifNoneExist"])
        assert name in ("identifier", "_tag") and value.startswith(SYSTEM + "|")
    ginkgo_url = full_url(statement_key("doc1", "ginkgo", ENGINE.task_version))
    assert entries[2]["resource"]["focus"][0]["reference"] == ginkgo_url
    assert entries[3]["resource"]["target"] == [{"reference": e["fullUrl"]} for e in entries[:3]]
    again = note_bundle(NOTE, [FISH, GINKGO], [PAIN, BRUISE], ENGINE, opts())
    assert again is not None and again.bundle == nb.bundle  # deterministic, byte for byte


def test_a_new_version_updates_in_place_and_retracts_what_is_gone() -> None:
    first = note_bundle(NOTE, [FISH, GINKGO], [BRUISE], ENGINE, opts())
    assert first is not None
    previous = [
        Retraction(p.resource_type, p.key, {**p.resource, "id": "srv1", "meta": {"versionId": "1"}})
        for p in first.entries
        if p.action != "provenance"
    ]
    v4 = NoteContext("doc1", "4", "Patient/p1")
    stopped = NoteSupplement("fish oil", "discontinue", "stopped", (Span(3, 11),), ("fish oil",))
    nb = note_bundle(v4, [stopped], [], ENGINE, opts(replace=True), previous)
    assert nb is not None
    Bundle.model_validate(nb.bundle)
    rows = [
        (e["request"]["method"], e["request"]["url"].split("?")[0], e["resource"].get("status"))
        for e in nb.bundle["entry"]
    ]
    assert rows == [
        ("PUT", "MedicationStatement", "stopped"),
        ("PUT", "MedicationStatement", "entered-in-error"),
        ("PUT", "Observation", "entered-in-error"),
        ("POST", "Provenance", None),
    ]
    retracted = nb.bundle["entry"][1]["resource"]
    assert "id" not in retracted and "versionId" not in retracted["meta"]
    assert [a.action for a in nb.entries] == ["update", "retract", "retract", "provenance"]


def test_nothing_to_write_gives_no_bundle() -> None:
    assert note_bundle(NOTE, [], [], ENGINE, opts()) is None


def test_a_fact_about_an_unlisted_supplement_is_refused() -> None:
    with pytest.raises(MappingError, match="unknown supplement"):
        note_bundle(NOTE, [FISH], [BRUISE], ENGINE, opts())


def test_note_context_reads_the_document_reference() -> None:
    doc = {
        "resourceType": "DocumentReference",
        "id": "d9",
        "meta": {"versionId": "2"},
        "subject": {"reference": "Patient/p9"},
        "context": {
            "encounter": [{"reference": "Encounter/e9"}],
            "period": {"start": "2024-05-01T08:00:00Z"},
        },
        "author": [{"reference": "Practitioner?identifier=x|y"}],
        "relatesTo": [
            {"code": "replaces", "target": {"reference": "DocumentReference/old/_history/1"}},
            {"code": "appends", "target": {"reference": "DocumentReference/other"}},
        ],
    }
    ctx = note_context(doc, "DocumentReference.content[1].attachment")
    assert ctx == NoteContext(
        "d9", "2", "Patient/p9", "Encounter/e9", "2024-05-01T08:00:00Z",
        "DocumentReference.content[1].attachment",
    )  # fmt: skip
    assert replaced_notes(doc) == ("old",)
    with pytest.raises(MappingError, match="no literal subject"):
        note_context({**doc, "subject": {"reference": "Patient?identifier=a|b"}}, "x")
    with pytest.raises(MappingError, match="versionId"):
        note_context({**doc, "meta": {}}, "x")
