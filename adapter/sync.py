"""Incremental sync of DocumentReferences: one cycle = retry queued writes, then new pages.

Search: ``DocumentReference?_lastUpdated=gt<watermark - overlap>&_lastUpdated=le<now - lag>
&_sort=_lastUpdated&_count=N`` (+ category/type/status filters), following ``link[next]``
opaquely. The safety lag keeps out notes whose transaction may still be committing; the
overlap re-reads a window before the watermark, and (id, versionId) de-duplicates it. The
watermark advances only after a page is fully processed and recorded. With
``since_param = "date"`` (servers without ``_lastUpdated``) the note date plays that role,
which sees new notes but not edits of old ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from adapter.auth import build_authenticator
from adapter.config import Settings
from adapter.errors import FhirError, FhirTemporaryError
from adapter.fhir_client import FhirClient, RetryPolicy, tls_verify
from adapter.process import NoteProcessor, Prepared, ProcessOptions, Tally, parse_instant
from adapter.store import Conn, Store
from adapter.writeback import (
    BundleWriter,
    DirectoryWriter,
    FhirWriter,
    output_rows,
    planned_from_payload,
    written_count,
)
from extraction.api import Extractor
from extraction.errors import WorkerError
from mappers.terminology import CodeLookup, no_codes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncOptions:
    source: str
    since_param: str = "_lastUpdated"
    page_size: int = 50
    categories: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    safety_lag_s: int = 120
    overlap_s: int = 300
    max_attempts: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> SyncOptions:
        f = settings.fhir
        return cls(
            source=f.base_url.rstrip("/"),
            since_param=f.since_param,
            page_size=f.page_size,
            categories=f.categories,
            types=f.types,
            statuses=f.statuses,
            safety_lag_s=f.safety_lag_s,
            overlap_s=f.overlap_s,
            max_attempts=settings.writeback.max_attempts,
        )


@dataclass
class CycleSummary:
    source: str
    tally: Tally = field(default_factory=Tally)
    pages: int = 0
    duration_s: float = 0.0
    error: str | None = None
    locked_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self.tally)
        out.update(pages=self.pages, duration_s=round(self.duration_s, 3), error=self.error)
        return out

    def line(self) -> str:
        """The one-line per-cycle summary (counts only: no ids, no text)."""
        if self.locked_out:
            return "sync cycle skipped: another worker holds this source"
        t = self.tally
        status = f"FAILED ({self.error})" if self.error else "ok"
        return (
            f"sync cycle {status}: notes seen={t.seen} processed={t.processed} "
            f"duplicates={t.duplicates} skipped={t.skipped} no_text={t.no_text} "
            f"failed={t.failed} retried={t.retried}; resources written={t.written}; "
            f"pages={self.pages} duration={self.duration_s:.1f}s"
        )


def fhir_instant(value: datetime) -> str:
    """Millisecond UTC instant, the precision servers index ``_lastUpdated`` at."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def search_params(
    opts: SyncOptions, watermark: datetime | None, now: datetime
) -> list[tuple[str, str]]:
    """The DocumentReference search of one cycle."""
    param = opts.since_param
    params: list[tuple[str, str]] = []
    if watermark is not None:
        since = watermark - timedelta(seconds=opts.overlap_s)
        params.append((param, "gt" + fhir_instant(since)))
    params.append((param, "le" + fhir_instant(now - timedelta(seconds=opts.safety_lag_s))))
    params += [("_sort", param), ("_count", str(opts.page_size))]
    for name, values in (
        ("category", opts.categories),
        ("type", opts.types),
        ("status", opts.statuses),
    ):
        if values:
            params.append((name, ",".join(values)))
    return params


def page_documents(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The DocumentReferences a searchset page matched (includes and outcomes left out)."""
    docs = []
    for entry in bundle.get("entry") or []:
        res = entry.get("resource")
        mode = (entry.get("search") or {}).get("mode", "match")
        if (
            mode == "match"
            and isinstance(res, dict)
            and res.get("resourceType") == "DocumentReference"
        ):
            docs.append(res)
    return docs


class Syncer:
    """One FHIR source: cycles of retry-then-pull, under a per-source advisory lock."""

    def __init__(
        self,
        *,
        client: FhirClient,
        store: Store,
        processor: NoteProcessor,
        writer: BundleWriter | None,
        options: SyncOptions,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        persist: bool = True,
    ) -> None:
        self._client = client
        self._store = store
        self._processor = processor
        self._writer = writer
        self._opts = options
        self._now = now
        self._persist = persist

    def run_cycle(self, stop: threading.Event | None = None) -> CycleSummary:
        """Retry queued writes, then process new pages; never raises for FHIR failures or
        failed model workers (the page they were on is left for the next cycle)."""
        summary = CycleSummary(self._opts.source)
        started = time.monotonic()
        with self._store.source_lock() as locked:
            if not locked:
                summary.locked_out = True
                log.info(summary.line())
                return summary
            try:
                if self._persist:
                    self._retry_pending(summary.tally)
                self._pull(summary, stop)
            except FhirError as exc:
                summary.error = str(exc)
            except WorkerError as exc:  # names a worker and an exit code, never note text
                summary.error = f"model workers failed: {exc}"
            summary.duration_s = time.monotonic() - started
            if self._persist:
                self._store.record_cycle(summary.as_dict(), summary.duration_s, summary.error)
        (log.error if summary.error else log.info)(summary.line())
        return summary

    def _pull(self, summary: CycleSummary, stop: threading.Event | None) -> None:
        params = search_params(self._opts, self._store.watermark(), self._now())
        for bundle in self._client.search_pages("DocumentReference", params):
            newest = self._page(page_documents(bundle), summary.tally)
            if newest is not None and self._persist:
                self._store.advance_watermark(newest)
            summary.pages += 1
            log.info("page %d done: %d notes seen so far", summary.pages, summary.tally.seen)
            if stop is not None and stop.is_set():
                log.info("stop requested: ending the cycle after a complete page")
                return

    def _page(self, docs: list[dict[str, Any]], tally: Tally) -> datetime | None:
        """Process one page; the newest timestamp on it (the next watermark candidate)."""
        tally.seen += len(docs)
        keys = [(str(d.get("id")), str((d.get("meta") or {}).get("versionId"))) for d in docs]
        seen = self._store.seen_versions(keys)
        prepared: list[Prepared] = []
        for doc, key in zip(docs, keys, strict=True):
            if key in seen:
                tally.duplicates += 1
                continue
            seen.add(key)
            prep = self._processor.prepare(doc, tally)
            if prep is not None:
                prepared.append(prep)
        if prepared:
            started = time.monotonic()
            results = self._processor.extract([p.text.text for p in prepared])
            per_note = int((time.monotonic() - started) * 1000 / len(prepared))
            for prep, result in zip(prepared, results, strict=True):
                prep.timings_ms["extract"] = per_note
                self._processor.finish(prep, result, tally)
        stamps = [self._stamp(d) for d in docs]
        return max((s for s in stamps if s is not None), default=None)

    def _stamp(self, doc: Mapping[str, Any]) -> datetime | None:
        if self._opts.since_param == "date":
            return parse_instant(doc.get("date"))
        return parse_instant((doc.get("meta") or {}).get("lastUpdated"))

    def _retry_pending(self, tally: Tally) -> None:
        """Resend the Bundles whose write failed in an earlier cycle (oldest first)."""
        if self._writer is None:
            return
        for pending in self._store.pending_writes(self._opts.max_attempts):
            planned = planned_from_payload(pending.payload)
            tally.retried += 1
            try:
                answers = self._writer.write(pending.payload["name"], pending.payload["bundle"])
            except FhirTemporaryError as exc:
                # the server is struggling: leave the queue for the next cycle
                log.warning(
                    "retry of a queued write failed (HTTP %s); stopping retries", exc.status
                )
                tally.failed += 1
                return
            except FhirError as exc:
                abandoned = self._store.fail_pending(pending, str(exc), self._opts.max_attempts)
                log.warning(
                    "retry of a queued write failed (HTTP %s)%s",
                    exc.status,
                    "; giving up on this note" if abandoned else "",
                )
                tally.failed += 1
                continue
            rows = output_rows(planned, answers)
            self._store.complete_pending(pending, rows)
            tally.written += written_count(rows)


def build_client(settings: Settings, transport: httpx.BaseTransport | None = None) -> FhirClient:
    """The FHIR client the configuration describes (auth, TLS, timeouts, retries)."""
    f, a = settings.fhir, settings.auth
    key = settings.resolve(a.private_key_path) if a.private_key_path else None
    return FhirClient(
        f.base_url,
        auth=build_authenticator(a, f.base_url, key),
        transport=transport,
        timeout_s=f.timeout_s,
        verify=tls_verify(f.verify_tls, settings.resolve(f.ca_bundle) if f.ca_bundle else None),
        retry=RetryPolicy(f.max_retries, f.backoff_base_s, f.max_backoff_s),
        strict_search=f.strict_search,
    )


def build_syncer(
    settings: Settings,
    *,
    client: FhirClient,
    conn: Conn,
    extractor: Extractor,
    codes: CodeLookup = no_codes,
    dry_run_dir: Path | None = None,
    software: str = "dsfhir",
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Syncer:
    """A Syncer wired from the configuration; ``dry_run_dir`` writes Bundles to files instead
    of the server and records nothing (no watermark move, no note state)."""
    options = SyncOptions.from_settings(settings)
    store = Store(conn, options.source)
    writer: BundleWriter | None = None
    if dry_run_dir is not None:
        writer = DirectoryWriter(dry_run_dir)
    elif settings.writeback.enabled:
        writer = FhirWriter(client)
    processor = NoteProcessor(
        client=client,
        store=store,
        extractor=extractor,
        writer=writer,
        options=ProcessOptions(
            identifier_system=settings.writeback.identifier_system,
            software=software,
            max_note_bytes=settings.fhir.max_note_bytes,
            store_text=settings.writeback.store_note_text,
        ),
        codes=codes,
        now=now,
        persist=dry_run_dir is None,
    )
    return Syncer(
        client=client,
        store=store,
        processor=processor,
        writer=writer,
        options=options,
        now=now,
        persist=dry_run_dir is None,
    )
