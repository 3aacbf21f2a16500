"""Sync failure paths (mock FHIR transport, real Postgres): watermark and results stay right."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from adapter import migrate
from adapter.config import FhirConfig, Settings, WritebackConfig
from adapter.fhir_client import FhirClient, RetryPolicy
from adapter.sync import CycleSummary, build_syncer
from extraction.errors import WorkerError
from tests.fhir_server import docref, make_extractor

BASE = "https://ehr.example.org/fhir"
GOOD = "Takes vitamin D3 daily. She stopped ginkgo due to bruising."


def stamped(doc: dict[str, Any], minute: int, version: str = "1") -> dict[str, Any]:
    return {**doc, "meta": {"versionId": version, "lastUpdated": f"2025-03-01T10:{minute:02d}:00Z"}}


@dataclass
class FakeFhir:
    """Pages of DocumentReferences, Binaries, and a transaction endpoint with knobs."""

    docs: list[dict[str, Any]]
    page_size: int = 2
    broken_page: int | None = None
    binaries: dict[str, httpx.Response] = field(default_factory=dict)
    reject: Callable[[dict[str, Any]], httpx.Response | None] = lambda bundle: None
    transactions: list[dict[str, Any]] = field(default_factory=list)
    searches: list[httpx.URL] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir").strip("/")
        if path == "DocumentReference":
            self.searches.append(request.url)
            return self._page(int(request.url.params.get("page", "0")))
        if path.startswith("Binary/"):
            return self.binaries[path.split("/")[1]]
        if path == "" and request.method == "POST":
            bundle = json.loads(request.content)
            self.transactions.append(bundle)
            return self.reject(bundle) or _accepted(bundle)
        return httpx.Response(404)

    def _page(self, page: int) -> httpx.Response:
        if page == self.broken_page:
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                             "entry": "oops"})  # fmt: skip
        chunk = self.docs[page * self.page_size : (page + 1) * self.page_size]
        links = []
        if (page + 1) * self.page_size < len(self.docs):
            links.append({"relation": "next", "url": f"{BASE}/DocumentReference?page={page + 1}"})
        entries = [{"resource": d, "search": {"mode": "match"}} for d in chunk]
        return httpx.Response(
            200,
            json={"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries},
        )


def _accepted(bundle: dict[str, Any]) -> httpx.Response:
    entries = []
    for i, entry in enumerate(bundle["entry"]):
        rtype = entry["resource"]["resourceType"]
        entries.append({"response": {"status": "201 Created",
                                     "location": f"{rtype}/srv{i}/_history/1"}})  # fmt: skip
    return httpx.Response(
        200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    )


@dataclass
class Harness:
    dsn: str
    fake: FakeFhir
    sleeps: list[float] = field(default_factory=list)
    extractor: Callable[[], Any] = make_extractor

    def cycle(self) -> CycleSummary:
        settings = Settings(
            fhir=FhirConfig(base_url=BASE, safety_lag_s=0, overlap_s=0, page_size=2),
            writeback=WritebackConfig(max_attempts=2),
        )
        client = FhirClient(
            BASE,
            transport=httpx.MockTransport(self.fake),
            retry=RetryPolicy(max_retries=2),
            sleep=self.sleeps.append,
        )
        with client, psycopg.connect(self.dsn) as conn:
            syncer = build_syncer(settings, client=client, conn=conn, extractor=self.extractor())
            return syncer.run_cycle()

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query).fetchall()  # type: ignore[arg-type]

    def watermark(self) -> datetime | None:
        rows = self.sql("SELECT watermark FROM sync_state")
        return rows[0][0] if rows else None

    def states(self) -> dict[str, str]:
        return dict(self.sql("SELECT doc_id, state FROM document_versions"))  # type: ignore[arg-type]


@pytest.fixture
def dsn(fresh_dsn: str) -> Iterator[str]:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        migrate.apply_pending(conn, migrate.default_migrations_dir())
    yield fresh_dsn


def minute(m: int) -> datetime:
    return datetime.fromisoformat(f"2025-03-01T10:{m:02d}:00+00:00")


def test_a_malformed_page_stops_the_cycle_after_the_committed_pages(dsn: str) -> None:
    docs = [stamped(docref(f"d{i}", "p1", GOOD), i) for i in range(5)]
    h = Harness(dsn, FakeFhir(docs, broken_page=1))
    summary = h.cycle()
    assert summary.error is not None and "malformed Bundle" in summary.error
    assert summary.pages == 1
    assert h.watermark() == minute(1)  # page 0 only
    assert set(h.states()) == {"d0", "d1"}
    cycles = h.sql("SELECT error IS NOT NULL FROM sync_cycles")
    assert cycles == [(True,)]

    h.fake.broken_page = None  # the server recovers; the cycle resumes after page 0
    h.fake.docs = docs[2:]  # what a _lastUpdated=gt search now returns
    again = h.cycle()
    assert again.error is None and again.tally.processed == 3
    assert set(h.states()) == {f"d{i}" for i in range(5)}
    assert h.watermark() == minute(4)


def test_bad_base64_and_unknown_charsets_are_recorded_and_the_page_goes_on(dsn: str) -> None:
    bad_b64 = docref("b64", "p1", GOOD)
    bad_b64["content"][0]["attachment"]["data"] = "not*base64!"
    docs = [
        stamped(bad_b64, 1),
        stamped(docref("cs", "p1", GOOD, content_type="text/plain; charset=x-klingon"), 2),
        stamped(docref("ok", "p1", GOOD), 3),
    ]
    h = Harness(dsn, FakeFhir(docs))
    summary = h.cycle()
    assert summary.error is None
    assert (summary.tally.no_text, summary.tally.processed) == (2, 1)
    reasons = dict(h.sql("SELECT doc_id, reason FROM document_versions"))  # type: ignore[arg-type]
    assert reasons["b64"].startswith("invalid-base64")
    assert reasons["cs"] == "unknown-charset: x-klingon"
    assert reasons["ok"] is None
    assert h.watermark() == minute(3)
    again = h.cycle()  # this fake ignores the filter: (id, versionId) de-duplicates
    assert (again.tally.duplicates, again.tally.processed, again.tally.no_text) == (3, 0, 0)
    last = [u for u in h.fake.searches if "_lastUpdated" in u.params][-1]
    assert last.params.get_list("_lastUpdated")[0] == "gt2025-03-01T10:03:00.000Z"


def outcome_400(bundle: dict[str, Any]) -> httpx.Response:
    return httpx.Response(
        400,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Entry 0: bad"}],
        },
    )


def test_a_rejected_transaction_is_queued_and_retried_next_cycle(dsn: str) -> None:
    docs = [stamped(docref("n1", "p1", GOOD), 1), stamped(docref("n2", "p2", GOOD), 2)]
    rejected: set[str] = set()

    def reject_n1(bundle: dict[str, Any]) -> httpx.Response | None:
        ref = bundle["entry"][0]["resource"]["derivedFrom"][0]["reference"]
        if "n1" in ref and not rejected:
            rejected.add(ref)
            return outcome_400(bundle)
        return None

    h = Harness(dsn, FakeFhir(docs, reject=reject_n1))
    first = h.cycle()
    assert first.error is None
    assert (first.tally.processed, first.tally.failed) == (1, 1)
    assert h.states() == {"n1": "write_failed", "n2": "done"}
    (reason,) = h.sql("SELECT reason FROM document_versions WHERE doc_id = 'n1'")[0]
    assert "HTTP 400" in reason and "Entry 0: bad" in reason
    assert h.sql("SELECT DISTINCT http_status FROM writeback_log WHERE doc_id = 'n1'") == [(400,)]
    assert h.watermark() == minute(2)  # the failed write does not hold the watermark back
    assert h.sql("SELECT count(*) FROM patient_supplements WHERE patient = 'Patient/p1'") == [(2,)]

    h.fake.docs = []
    second = h.cycle()
    assert (second.tally.retried, second.tally.written) == (1, 4)
    assert h.states() == {"n1": "done", "n2": "done"}
    sent = [json.dumps(t, sort_keys=True) for t in h.fake.transactions]
    assert sent[0] == sent[2]  # the queued Bundle is resent unchanged
    outputs = h.sql(
        "SELECT count(*) FROM fhir_outputs WHERE doc_id = 'n1' AND server_id IS NOT NULL"
    )
    assert outputs == [(3,)]


def test_a_write_that_keeps_failing_is_abandoned_after_max_attempts(dsn: str) -> None:
    h = Harness(dsn, FakeFhir([stamped(docref("n1", "p1", GOOD), 1)], reject=outcome_400))
    h.cycle()
    h.fake.docs = []
    assert h.cycle().tally.retried == 1
    assert h.states() == {"n1": "abandoned"}
    assert h.cycle().tally.retried == 0


def test_a_temporary_error_reading_a_binary_leaves_the_page_for_the_next_cycle(dsn: str) -> None:
    docs = [
        stamped(docref("inline", "p1", GOOD), 1),
        stamped(docref("remote", "p1", url="Binary/b1"), 2),
    ]
    h = Harness(dsn, FakeFhir(docs))
    h.fake.binaries["b1"] = httpx.Response(503)
    summary = h.cycle()
    assert summary.error is not None and "503" in summary.error
    assert h.sleeps == [1.0, 2.0]  # bounded retries first
    assert h.watermark() is None and h.states() == {}

    raw = "Takes melatonin for sleep.".encode("latin-1")
    h.fake.binaries["b1"] = httpx.Response(
        200, content=raw, headers={"Content-Type": "text/plain; charset=iso-8859-1"}
    )
    again = h.cycle()
    assert again.error is None and again.tally.processed == 2
    (sha,) = h.sql("SELECT text_chars FROM document_versions WHERE doc_id = 'remote'")[0]
    assert sha == len("Takes melatonin for sleep.")


def test_search_rate_limits_are_waited_out(dsn: str) -> None:
    docs = [stamped(docref("n1", "p1", GOOD), 1)]
    fake = FakeFhir(docs)
    limited = {"n": 0}

    def app(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("DocumentReference") and limited["n"] == 0:
            limited["n"] += 1
            return httpx.Response(429, headers={"Retry-After": "3"})
        return fake(request)

    h = Harness(dsn, fake)
    h.fake = app  # type: ignore[assignment]
    summary = h.cycle()
    assert summary.error is None and summary.tally.processed == 1
    assert h.sleeps == [3.0]
    assert base64.b64decode(docs[0]["content"][0]["attachment"]["data"]).decode() == GOOD


def test_a_note_the_engine_refuses_fails_alone(dsn: str) -> None:
    docs = [
        stamped(docref("ok1", "p1", GOOD), 1),
        stamped(docref("nul", "p1", "Takes iron\x00 daily."), 2),
        stamped(docref("ok2", "p2", GOOD), 3),
    ]
    h = Harness(dsn, FakeFhir(docs, page_size=3))
    summary = h.cycle()
    assert summary.error is None
    assert (summary.tally.processed, summary.tally.failed) == (2, 1)
    assert h.states() == {"ok1": "done", "nul": "failed", "ok2": "done"}
    (reason,) = h.sql("SELECT reason FROM document_versions WHERE doc_id = 'nul'")[0]
    assert reason.startswith("extraction failed: ValueError") and "NUL" in reason
    assert h.watermark() == minute(3)


class DeadWorkers:
    """An engine whose model worker processes have died."""

    info = make_extractor().info

    def extract(self, texts: Sequence[str]) -> list[Any]:
        raise WorkerError("model worker 1 exited (exit code -9)")


def test_dead_model_workers_leave_the_page_for_the_next_cycle(dsn: str) -> None:
    docs = [stamped(docref("a", "p1", GOOD), 1), stamped(docref("b", "p2", GOOD), 2)]
    h = Harness(dsn, FakeFhir(docs, page_size=2), extractor=DeadWorkers)
    summary = h.cycle()
    assert summary.error == "model workers failed: model worker 1 exited (exit code -9)"
    assert summary.tally.failed == 0  # no note is blamed for the machine
    assert h.states() == {} and h.watermark() is None and not h.fake.transactions
    h.extractor = make_extractor  # the next cycle, with working workers
    summary = h.cycle()
    assert summary.error is None and summary.tally.processed == 2
    assert h.states() == {"a": "done", "b": "done"} and h.watermark() == minute(2)
