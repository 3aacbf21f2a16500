"""End to end against a real sekmet-fhir server (loopback HTTP) and the real embedded Postgres."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapter import migrate
from adapter.cli_sync import lexicon_codes
from adapter.config import FhirConfig, Settings, WritebackConfig
from adapter.sync import CycleSummary, build_client, build_syncer
from tests.conftest import _with_dbname
from tests.fhir_server import (
    SekmetLauncher,
    SekmetServer,
    docref,
    make_extractor,
    make_lexicon,
    patient,
)

SYSTEM = "urn:dsfhir:extraction"

NOTE_A = (
    "Subjective: Patient reports taking vitamin D3 2000 IU daily. She has been taking fish oil "
    "for joint pain. She stopped ginkgo due to bruising.\n"
    "Plan: Recommend starting magnesium for muscle cramps."
)
NOTE_B = "Started melatonin for insomnia last week. Takes iron which causes constipation."
NOTE_PLAIN = "Follow-up visit. Blood pressure well controlled. No supplements discussed."


@dataclass
class Env:
    server: SekmetServer
    dsn: str
    settings: Settings
    tmp: Path

    def cycle(
        self, dry_run: Path | None = None, store_text: bool = False, **fhir: Any
    ) -> CycleSummary:
        settings = self.settings.model_copy(
            update={
                "fhir": self.settings.fhir.model_copy(update=fhir),
                "writeback": self.settings.writeback.model_copy(
                    update={"store_note_text": store_text}
                ),
            }
        )
        with build_client(settings) as client, psycopg.connect(self.dsn) as conn:
            syncer = build_syncer(
                settings,
                client=client,
                conn=conn,
                extractor=make_extractor(),
                codes=lexicon_codes(make_lexicon()),
                dry_run_dir=dry_run,
            )
            return syncer.run_cycle()

    def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, args).fetchall()  # type: ignore[arg-type]


def migrated(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate.apply_pending(conn, migrate.default_migrations_dir())
    return dsn


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetLauncher]:
    launcher = SekmetLauncher(tmp_path_factory.mktemp("sekmet"))
    yield launcher
    launcher.close()


@pytest.fixture
def env(tmp_path: Path, fresh_dsn: str, launcher: SekmetLauncher) -> Iterator[Env]:
    with launcher.server() as server:
        settings = Settings(
            fhir=FhirConfig(base_url=server.base_url, safety_lag_s=0, overlap_s=0, page_size=3),
            writeback=WritebackConfig(identifier_system=SYSTEM),
        )
        yield Env(server, migrated(fresh_dsn), settings, tmp_path)


def seed(server: SekmetServer, docs: list[dict[str, Any]]) -> None:
    for pid in sorted({d["subject"]["reference"].split("/")[1] for d in docs}):
        server.put(patient(pid))
    for doc in docs:
        server.put(doc)


def statements(server: SekmetServer, **params: str) -> list[dict[str, Any]]:
    return server.search("MedicationStatement", **params)


def by_name(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["medicationCodeableConcept"]["text"]: r for r in resources}


def test_pages_are_followed_and_everything_lands_in_fhir_and_postgres(env: Env) -> None:
    docs = [docref(f"n{i}", f"p{i % 3}", NOTE_PLAIN) for i in range(5)]
    docs += [docref("na", "pa", NOTE_A), docref("nb", "pb", NOTE_B)]
    seed(env.server, docs)

    summary = env.cycle()

    assert summary.error is None
    assert summary.pages == 3  # 7 notes, _count=3
    assert (summary.tally.seen, summary.tally.processed, summary.tally.failed) == (7, 7, 0)
    a = by_name(statements(env.server, subject="Patient/pa"))
    assert {k: v["status"] for k, v in a.items()} == {
        "vitamin d": "active",
        "fish oil": "active",
        "ginkgo": "stopped",
        "magnesium": "intended",
    }
    assert a["fish oil"]["reasonCode"] == [{"text": "joint pain"}]
    assert a["vitamin d"]["medicationCodeableConcept"]["coding"][0]["code"] == "900001"
    assert a["vitamin d"]["derivedFrom"] == [{"reference": "DocumentReference/na/_history/1"}]
    obs = env.server.search("Observation", subject="Patient/pa")
    assert [o["valueCodeableConcept"]["text"] for o in obs] == ["bruising"]
    focus = obs[0]["focus"][0]["reference"]
    assert focus == f"MedicationStatement/{a['ginkgo']['id']}"
    provs = env.server.search("Provenance")
    assert len(provs) == 2  # notes with supplements only
    # every written resource is reflected in Postgres, and the views answer directly
    rows = env.sql(
        "SELECT supplement, status, source_note FROM patient_supplements "
        "WHERE patient = 'Patient/pb' ORDER BY supplement"
    )
    assert rows == [("iron", "active", "nb"), ("melatonin", "active", "nb")]
    ae = env.sql("SELECT patient, supplement, event, observation_id FROM supplement_adverse_events")
    assert sorted(r[:3] for r in ae) == [
        ("Patient/pa", "ginkgo", "bruising"),
        ("Patient/pb", "iron", "constipation"),
    ]
    assert all(r[3] for r in ae)
    newest = max(env.server.read("DocumentReference", d["id"])["meta"]["lastUpdated"] for d in docs)
    (watermark,) = env.sql("SELECT watermark FROM sync_state")[0]
    assert watermark == datetime.fromisoformat(newest)
    stored, options = env.sql(
        "SELECT result, engine_options FROM extraction_results WHERE doc_id = 'na'"
    )[0]
    assert "text" not in stored  # note text is not kept unless configured
    assert options == "rules-test"  # the switches the engine reported
    assert env.sql("SELECT count(*) FROM document_versions WHERE note_text IS NOT NULL") == [(0,)]


def counts(server: SekmetServer) -> dict[str, int]:
    return {
        t: server.history_count(t) for t in ("MedicationStatement", "Observation", "Provenance")
    }


def test_rerun_writes_nothing_even_with_a_fresh_database(env: Env, pg_uri: str) -> None:
    seed(env.server, [docref("na", "pa", NOTE_A), docref("nb", "pb", NOTE_B)])
    first = env.cycle()
    assert first.tally.written == 10  # 6 statements, 2 observations, 2 provenances
    before = counts(env.server)

    again = env.cycle(overlap_s=3600)  # the overlap re-reads both notes
    assert (again.tally.seen, again.tally.duplicates, again.tally.written) == (2, 2, 0)

    # a lost database: the notes are processed again, but every entry is conditional
    import uuid

    other = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{other}"')
    env.dsn = migrated(_with_dbname(pg_uri, other))
    rebuilt = env.cycle()
    assert (rebuilt.tally.processed, rebuilt.tally.written) == (2, 0)
    assert counts(env.server) == before
    assert len(statements(env.server)) == 6


def test_incremental_cycle_sees_only_new_and_changed_notes(env: Env) -> None:
    seed(env.server, [docref(f"n{i}", "p1", NOTE_PLAIN) for i in range(4)])
    assert env.cycle().tally.processed == 4

    env.server.put(docref("n9", "p1", NOTE_B))  # new
    env.server.put(docref("n2", "p1", NOTE_A))  # changed: version 2
    second = env.cycle()

    assert (second.tally.seen, second.tally.processed, second.tally.duplicates) == (2, 2, 0)
    versions = env.sql("SELECT doc_id, version_id, current FROM document_versions ORDER BY 1, 2")
    assert ("n2", "1", False) in versions and ("n2", "2", True) in versions
    assert ("n9", "1", True) in versions
    third = env.cycle()
    assert third.tally.seen == 0 and third.pages == 1


def test_url_only_attachments_are_fetched_as_binary(env: Env) -> None:
    text = NOTE_B.encode("utf-8")
    env.server.put(
        {
            "resourceType": "Binary",
            "id": "b1",
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(text).decode(),
        }
    )
    seed(
        env.server,
        [
            docref("rel", "p1", url="Binary/b1"),
            docref("abs", "p2", url=f"{env.server.base_url}/Binary/b1"),
            docref("gone", "p3", url="Binary/missing"),
            docref("away", "p3", url="https://elsewhere.example/fhir/Binary/b1"),
        ],
    )
    summary = env.cycle(store_text=True)
    assert (summary.tally.processed, summary.tally.no_text) == (2, 2)
    rows = env.sql("SELECT doc_id, state, reason, text_chars FROM document_versions ORDER BY 1")
    assert rows[0] == ("abs", "done", None, len(NOTE_B))
    assert rows[1][:3] == ("away", "no_text", "binary-fetch-failed: refusing to follow a URL "
                           "on another server (elsewhere.example)")  # fmt: skip
    assert rows[2][:3] == ("gone", "no_text", "binary-fetch-failed: HTTP 404")
    assert rows[3] == ("rel", "done", None, len(NOTE_B))
    # store_note_text = true keeps the text with the note and in the extraction result
    kept = env.sql(
        "SELECT d.note_text, r.result->>'text' FROM document_versions d "
        "JOIN extraction_results r USING (source, doc_id, version_id) WHERE doc_id = 'rel'"
    )
    assert kept == [(NOTE_B, NOTE_B)]
    assert {s["medicationCodeableConcept"]["text"] for s in statements(env.server)} == {
        "melatonin",
        "iron",
    }


def test_notes_without_usable_text_are_recorded_with_the_reason(env: Env) -> None:
    html = "<html><body><p>Continues <b>fish oil</b> daily.</p><script>x()</script></body></html>"
    seed(
        env.server,
        [
            docref("pdf", "p1", raw=b"%PDF-1.4 ...", content_type="application/pdf"),
            docref("htm", "p1", html, content_type="text/html; charset=utf-8"),
            docref("pre", "p1", NOTE_A, docStatus="preliminary"),
            docref("eie", "p1", NOTE_A, status="entered-in-error"),
        ],
    )
    summary = env.cycle()
    assert (summary.tally.no_text, summary.tally.skipped, summary.tally.processed) == (1, 2, 1)
    rows = dict(
        env.sql("SELECT doc_id, state || ':' || coalesce(reason, '') FROM document_versions")
    )
    assert rows == {
        "pdf": "no_text:no-text-attachment: application/pdf",
        "htm": "done:",
        "pre": "skipped:docStatus preliminary",
        "eie": "skipped:status entered-in-error",
    }
    (ms,) = statements(env.server)
    assert ms["medicationCodeableConcept"]["text"] == "fish oil"
    ext = ms["extension"][0]["extension"]
    assert {e["url"]: next(v for k, v in e.items() if k != "url") for e in ext} == {
        "reference": {"reference": "DocumentReference/htm/_history/1"},
        "path": "DocumentReference.content[0].attachment",
        "offset": len("Continues "),
        "length": len("fish oil"),
    }


NOTE_A_V2 = (
    "Addendum: She stopped fish oil last month. Takes vitamin D3 daily. "
    "Started magnesium for muscle cramps."
)


def test_a_new_note_version_replaces_what_the_old_one_produced(env: Env) -> None:
    seed(env.server, [docref("na", "pa", NOTE_A)])
    env.cycle()
    v1 = by_name(statements(env.server))
    (obs_v1,) = env.server.search("Observation")

    env.server.put(docref("na", "pa", NOTE_A_V2))
    summary = env.cycle()

    assert summary.tally.processed == 1
    v2 = by_name(statements(env.server))
    assert set(v2) == set(v1)  # updated in place or retracted: nothing duplicated
    assert {k: r["id"] for k, r in v2.items()} == {k: r["id"] for k, r in v1.items()}
    assert {k: r["status"] for k, r in v2.items()} == {
        "vitamin d": "active",
        "fish oil": "stopped",
        "magnesium": "active",
        "ginkgo": "entered-in-error",  # the new version no longer mentions it
    }
    assert v2["fish oil"]["derivedFrom"] == [{"reference": "DocumentReference/na/_history/2"}]
    assert env.server.read("Observation", obs_v1["id"])["status"] == "entered-in-error"
    provs = env.server.search("Provenance")
    assert sorted(p["entity"][0]["what"]["reference"] for p in provs) == [
        "DocumentReference/na/_history/1",
        "DocumentReference/na/_history/2",
    ]
    view = env.sql("SELECT supplement, status, source_note_version FROM patient_supplements")
    assert sorted(view) == [
        ("fish oil", "stopped", "2"),
        ("magnesium", "active", "2"),
        ("vitamin d", "active", "2"),
    ]
    assert env.sql("SELECT count(*) FROM supplement_adverse_events") == [(0,)]
    retracted = env.sql("SELECT resource_type, supplement FROM fhir_outputs WHERE retracted")
    assert sorted(retracted) == [("MedicationStatement", "ginkgo"), ("Observation", "ginkgo")]


def test_entered_in_error_and_replaced_notes_have_their_outputs_retracted(env: Env) -> None:
    seed(env.server, [docref("na", "pa", NOTE_A), docref("nb", "pb", NOTE_B)])
    env.cycle()
    env.server.put(docref("na", "pa", NOTE_A, status="entered-in-error"))
    env.server.put(
        docref(
            "nb2",
            "pb",
            "Takes iron daily.",
            relatesTo=[{"code": "replaces", "target": {"reference": "DocumentReference/nb"}}],
        )
    )
    summary = env.cycle()

    assert (summary.tally.skipped, summary.tally.processed) == (1, 1)
    live = {
        (s["subject"]["reference"], s["medicationCodeableConcept"]["text"])
        for s in statements(env.server)
        if s["status"] != "entered-in-error"
    }
    assert live == {("Patient/pb", "iron")}
    assert all(o["status"] == "entered-in-error" for o in env.server.search("Observation"))
    view = env.sql("SELECT patient, supplement, source_note FROM patient_supplements")
    assert view == [("Patient/pb", "iron", "nb2")]


def test_dry_run_writes_bundles_to_files_and_records_nothing(env: Env) -> None:
    seed(env.server, [docref("na", "pa", NOTE_A), docref("n0", "pa", NOTE_PLAIN)])
    out = env.tmp / "dry"
    summary = env.cycle(dry_run=out)

    assert summary.tally.processed == 2
    assert sorted(p.name for p in out.iterdir()) == ["na_1.json"]
    bundle = json.loads((out / "na_1.json").read_text())
    assert bundle["type"] == "transaction"
    assert [e["request"]["method"] for e in bundle["entry"]] == ["POST"] * 6
    assert all("ifNoneExist" in e["request"] for e in bundle["entry"])
    assert statements(env.server) == []
    assert env.sql("SELECT count(*) FROM document_versions") == [(0,)]
    assert env.sql("SELECT watermark FROM sync_state") == []
    assert env.cycle().tally.processed == 2  # the real run still sees both notes


SYNTHEA = Path("/work/shared/data/synthea-10-patients")


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="Synthea sample data not available")
def test_synthea_notes_load_page_by_page(env: Env) -> None:
    """Realistic payloads: US Core DocumentReferences, base64 text/plain, mostly superseded."""
    lines = (SYNTHEA / "DocumentReference.000.ndjson").read_text().splitlines()[:120]
    # author/custodian are conditional references to resources this sample does not include
    docs = [
        {k: v for k, v in json.loads(line).items() if k not in ("author", "custodian")}
        for line in lines
    ]
    patients = {d["subject"]["reference"].split("/")[1] for d in docs}
    entries = [
        {"resource": patient(pid), "request": {"method": "PUT", "url": f"Patient/{pid}"}}
        for pid in sorted(patients)
    ]
    entries += [
        {"resource": d, "request": {"method": "PUT", "url": f"DocumentReference/{d['id']}"}}
        for d in docs
    ]
    with build_client(env.settings) as client:
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                           idempotent=True)  # fmt: skip

    summary = env.cycle(page_size=50)

    assert summary.error is None
    assert (summary.pages, summary.tally.seen, summary.tally.processed) == (3, 120, 120)
    states = env.sql("SELECT state, count(*) FROM document_versions GROUP BY state")
    assert states == [("done", 120)]
    chars = env.sql("SELECT min(text_chars) FROM document_versions")[0][0]
    assert chars > 100  # the base64 text/plain notes were decoded
