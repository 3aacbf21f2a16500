"""``dsfhir sync --once``, ``dsfhir worker``, ``dsfhir report``: the FHIR adapter's commands."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from adapter import migrate
from adapter.config import Settings
from adapter.db import connect, database_dsn, open_pool
from adapter.engine import load_lexicon, opened_extractor, software_version
from adapter.errors import ConfigError, DsfhirError
from adapter.fhir_client import FhirClient
from adapter.sync import CycleSummary, build_client, build_syncer
from adapter.worker import install_stop_handlers, make_trigger, run_worker
from extraction.api import Extractor
from extraction.lexicon import Lexicon
from mappers.terminology import CodeLookup, SupplementCodes

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sync = sub.add_parser(
        "sync",
        help="one cycle: pull new notes, extract, write back",
        description="Pull new/changed DocumentReferences, extract supplements, write "
        "MedicationStatement/Observation/Provenance back, record everything in Postgres.",
    )
    sync.add_argument("--once", action="store_true", help="run one cycle and exit")
    sync.add_argument(
        "--dry-run",
        type=Path,
        metavar="DIR",
        help="write each note's transaction Bundle to DIR instead of the server; "
        "records nothing (the watermark does not move)",
    )
    sync.set_defaults(handler=_sync)
    worker = sub.add_parser("worker", help="run sync cycles on the configured schedule")
    worker.set_defaults(handler=_worker)
    report = sub.add_parser("report", help="print each patient's supplements from Postgres")
    report.add_argument("--patient", help="only this patient reference, e.g. Patient/123")
    report.set_defaults(handler=_report)


def lexicon_codes(lexicon: Lexicon) -> CodeLookup:
    """RxNorm/UNII codes of a normalised name, as far as the lexicon knows them."""

    def lookup(name: str) -> SupplementCodes | None:
        entry = lexicon.entries.get(name)
        return SupplementCodes(entry.rxcui, entry.unii) if entry else None

    return lookup


@dataclass
class Runtime:
    pool: ConnectionPool
    client: FhirClient
    extractor: Extractor
    codes: CodeLookup


@contextmanager
def runtime(settings: Settings) -> Iterator[Runtime]:
    """Postgres (migrated), the FHIR client and the extraction engine, closed on exit."""
    if not settings.fhir.base_url:
        raise ConfigError("[fhir] base_url is required for sync / worker")
    with database_dsn(settings.database, settings.state_dir) as dsn:
        with connect(dsn, settings.database.connect_timeout_s) as conn:
            migrate.ensure_migrated(conn, migrate.default_migrations_dir())
        pool = open_pool(dsn, settings.database)
        try:
            with opened_extractor(settings, pool) as extractor, build_client(settings) as client:
                codes = lexicon_codes(load_lexicon(settings))
                yield Runtime(pool, client, extractor, codes)
        finally:
            pool.close()


def run_cycle(
    settings: Settings,
    rt: Runtime,
    stop: threading.Event | None = None,
    dry_run_dir: Path | None = None,
) -> CycleSummary:
    with rt.pool.connection() as conn:
        syncer = build_syncer(
            settings,
            client=rt.client,
            conn=conn,
            extractor=rt.extractor,
            codes=rt.codes,
            dry_run_dir=dry_run_dir,
            software=f"dsfhir {software_version()}",
        )
        return syncer.run_cycle(stop)


def _sync(args: argparse.Namespace, settings: Settings) -> int:
    if not args.once:
        raise ConfigError("dsfhir sync runs one cycle: pass --once (for a schedule: dsfhir worker)")
    with runtime(settings) as rt:
        summary = run_cycle(settings, rt, dry_run_dir=args.dry_run)
    print(summary.line())
    if args.dry_run:
        print(f"dry run: Bundles written to {args.dry_run}")
    return 1 if summary.error else 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    stop = threading.Event()
    install_stop_handlers(stop)
    trigger = make_trigger(settings.schedule)
    with runtime(settings) as rt:

        def cycle(stop_event: threading.Event) -> None:
            try:
                run_cycle(settings, rt, stop_event)
            except (DsfhirError, psycopg.Error) as exc:
                # the worker outlives a bad cycle; the next one starts from the watermark
                log.error("sync cycle aborted: %s", exc)

        run_worker(cycle, trigger, stop)
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    with database_dsn(settings.database, settings.state_dir) as dsn:
        with connect(dsn, settings.database.connect_timeout_s) as conn:
            migrate.ensure_migrated(conn, migrate.default_migrations_dir())
            source = settings.fhir.base_url.rstrip("/") or None
            for line in report_lines(conn, args.patient, source):
                print(line)
    return 0


def report_lines(
    conn: psycopg.Connection[tuple[object, ...]], patient: str | None, source: str | None = None
) -> list[str]:
    """Each patient's supplement list and adverse events, from the informatician views.

    ``patient`` / ``source`` (a FHIR base URL) narrow it; None means all.
    """
    where = """(%(p)s::text IS NULL OR patient = %(p)s)
               AND (%(s)s::text IS NULL OR fhir_source = %(s)s)"""
    args = {"p": patient, "s": source}
    rows = conn.execute(
        sql.SQL(
            """SELECT patient, supplement, status, usage_status, status_detail,
                      to_char(last_note_date, 'YYYY-MM-DD'), medication_statement_id
               FROM patient_supplements WHERE {where} ORDER BY patient, supplement"""
        ).format(where=sql.SQL(where)),
        args,
    ).fetchall()
    events = conn.execute(
        sql.SQL(
            """SELECT DISTINCT ON (patient, supplement, lower(event)) patient, supplement, event
               FROM supplement_adverse_events WHERE {where}
               ORDER BY patient, supplement, lower(event), note_date DESC"""
        ).format(where=sql.SQL(where)),
        args,
    ).fetchall()
    by_patient: dict[str, list[str]] = {}
    for pat, supp, status, usage, detail, date, ms_id in rows:
        usage_text = f"{usage}/{detail}" if detail else str(usage)
        ms = f"MedicationStatement/{ms_id}" if ms_id else "not written"
        by_patient.setdefault(str(pat), []).append(
            f"  {supp!s:<22} {status!s:<10} {usage_text:<20} {date or 'undated'}  {ms}"
        )
    for pat, supp, event in events:
        by_patient.setdefault(str(pat), []).append(f"  adverse event: {event} <- {supp}")
    lines: list[str] = []
    for pat, entries in by_patient.items():
        lines += [str(pat), *entries]
    return lines or ["no supplements recorded yet"]
