"""Pure pieces of the sync: the search, page parsing, skip rules, write answers, summary line."""

from __future__ import annotations

from datetime import UTC, datetime

from adapter.process import Tally, parse_instant, skip_reason
from adapter.store import OutputRow
from adapter.sync import CycleSummary, SyncOptions, page_documents, search_params
from adapter.writeback import is_idempotent, parse_entry_response, written_count

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_first_search_has_no_lower_bound_and_keeps_the_safety_lag() -> None:
    opts = SyncOptions(source="s", page_size=25, safety_lag_s=120)
    assert search_params(opts, None, NOW) == [
        ("_lastUpdated", "le2025-03-01T11:58:00.000Z"),
        ("_sort", "_lastUpdated"),
        ("_count", "25"),
    ]


def test_later_searches_reread_the_overlap_and_apply_the_filters() -> None:
    opts = SyncOptions(
        source="s",
        overlap_s=300,
        safety_lag_s=0,
        categories=("clinical-note",),
        types=("http://loinc.org|11506-3", "http://loinc.org|11488-4"),
        statuses=("current",),
    )
    watermark = datetime(2025, 3, 1, 11, 0, 0, 123456, tzinfo=UTC)
    params = search_params(opts, watermark, NOW)
    assert params[0] == ("_lastUpdated", "gt2025-03-01T10:55:00.123Z")
    assert ("category", "clinical-note") in params
    assert ("type", "http://loinc.org|11506-3,http://loinc.org|11488-4") in params
    assert ("status", "current") in params


def test_servers_without_last_updated_use_the_note_date() -> None:
    opts = SyncOptions(source="s", since_param="date", overlap_s=0, safety_lag_s=0)
    params = search_params(opts, NOW, NOW)
    assert params[:3] == [
        ("date", "gt2025-03-01T12:00:00.000Z"),
        ("date", "le2025-03-01T12:00:00.000Z"),
        ("_sort", "date"),
    ]


def test_only_matched_document_references_are_processed() -> None:
    bundle = {
        "entry": [
            {"resource": {"resourceType": "DocumentReference", "id": "a"}},
            {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
            {"resource": {"resourceType": "DocumentReference", "id": "b"},
             "search": {"mode": "match"}},
        ]
    }  # fmt: skip
    assert [d["id"] for d in page_documents(bundle)] == ["a", "b"]


def test_skip_rules() -> None:
    assert skip_reason({"status": "current", "docStatus": "final"}) is None
    assert skip_reason({"status": "superseded"}) is None  # an older note is still a note
    assert skip_reason({"status": "entered-in-error"}) == "status entered-in-error"
    assert skip_reason({"status": "current", "docStatus": "preliminary"}) == (
        "docStatus preliminary"
    )


def test_instants_parse_with_zones_and_partial_dates_do_not() -> None:
    assert parse_instant("2025-03-01T10:00:00.5-05:00") == datetime(
        2025, 3, 1, 15, 0, 0, 500000, tzinfo=UTC
    )
    assert parse_instant("2025-03-01") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_instant("2025-03") is None
    assert parse_instant(None) is None


def test_only_all_conditional_transactions_count_as_idempotent() -> None:
    conditional = {
        "entry": [
            {"request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=a|b"}},
            {"request": {"method": "PUT", "url": "MedicationStatement?identifier=a|c"}},
        ]
    }
    assert is_idempotent(conditional)
    plain = {"entry": [*conditional["entry"], {"request": {"method": "POST", "url": "Provenance"}}]}
    assert not is_idempotent(plain)


def test_transaction_answers_give_server_ids_and_written_counts() -> None:
    assert parse_entry_response(
        {"response": {"status": "201 Created",
                      "location": "https://x/fhir/MedicationStatement/ab-1/_history/1"}}
    ) == ("ab-1", 201)  # fmt: skip
    assert parse_entry_response(
        {"response": {"status": "200"}, "resource": {"resourceType": "Observation", "id": "o9"}}
    ) == ("o9", 200)
    rows = [
        OutputRow("MedicationStatement", "k1", "create", {}, None, "1", 201),
        OutputRow("MedicationStatement", "k2", "create", {}, None, "2", 200),  # matched existing
        OutputRow("MedicationStatement", "k3", "update", {}, None, "3", 200),
        OutputRow("Observation", "k4", "retract", {}, None, "4", 200),
    ]
    assert written_count(rows) == 3


def test_the_summary_line_has_counts_and_no_identifiers() -> None:
    summary = CycleSummary("https://ehr/fhir", Tally(seen=5, processed=3, failed=1, written=7))
    summary.pages, summary.duration_s = 2, 1.25
    assert summary.line() == (
        "sync cycle ok: notes seen=5 processed=3 duplicates=0 skipped=0 no_text=0 failed=1 "
        "retried=0; resources written=7; pages=2 duration=1.2s"
    )
    summary.locked_out = True
    assert "another worker" in summary.line()
