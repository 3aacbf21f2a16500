"""One note version through the adapter: skip rules, text, extraction, mapping, write-back, record.

Failures stay with the note: no text (with the reason), a failed extraction or mapping, or a
failed write (queued and retried next cycle) is recorded and the other notes go on. Only a
temporary FHIR error while *reading* escapes, so the page is retried as a whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapter.errors import FhirError, NoteTextError
from adapter.fhir_client import FhirClient
from adapter.note_text import NoteText, note_text
from adapter.store import DocumentMeta, FactRow, NoteRecord, OutputRow, Store, SupplementRow
from adapter.writeback import BundleWriter, output_rows, pending_payload, written_count
from extraction.api import Extractor, NoteExtraction, NoteFact, NoteSupplement
from extraction.errors import ExtractionError, WorkerError
from mappers.bundle import BundleOptions, NoteBundle, note_bundle
from mappers.errors import MappingError
from mappers.identifiers import observation_key, statement_key
from mappers.note import NoteContext, note_context, note_date, replaced_notes
from mappers.terminology import CodeLookup, no_codes, statement_status

log = logging.getLogger(__name__)

SKIP_STATUS = frozenset({"entered-in-error"})
SKIP_DOC_STATUS = frozenset({"preliminary", "entered-in-error"})


@dataclass(frozen=True)
class ProcessOptions:
    identifier_system: str = "urn:dsfhir:extraction"
    software: str = "dsfhir"
    max_note_bytes: int = 1_000_000
    store_text: bool = False


@dataclass
class Tally:
    """Per-cycle counters (the summary line)."""

    seen: int = 0
    processed: int = 0
    duplicates: int = 0
    skipped: int = 0
    no_text: int = 0
    failed: int = 0
    written: int = 0
    retried: int = 0


@dataclass(frozen=True)
class Prepared:
    doc: Mapping[str, Any]
    meta: DocumentMeta
    text: NoteText
    timings_ms: dict[str, int] = field(default_factory=dict)


def parse_instant(value: object) -> datetime | None:
    """A FHIR instant/dateTime as an aware datetime (UTC when no zone); None if partial."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def document_meta(doc: Mapping[str, Any]) -> DocumentMeta:
    meta = doc.get("meta") or {}
    subject = (doc.get("subject") or {}).get("reference")
    encounters = (doc.get("context") or {}).get("encounter") or [{}]
    return DocumentMeta(
        doc_id=str(doc.get("id") or ""),
        version_id=str(meta.get("versionId") or ""),
        patient_ref=subject if isinstance(subject, str) else None,
        encounter_ref=(encounters[0] or {}).get("reference") if encounters else None,
        note_date=parse_instant(note_date(doc)),
        last_updated=parse_instant(meta.get("lastUpdated")),
        doc_status=doc.get("status"),
    )


def skip_reason(doc: Mapping[str, Any]) -> str | None:
    """Why a note is not processed: entered in error, or not final (preliminary)."""
    if doc.get("status") in SKIP_STATUS:
        return f"status {doc['status']}"
    if doc.get("docStatus") in SKIP_DOC_STATUS:
        return f"docStatus {doc['docStatus']}"
    return None


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class NoteProcessor:
    """Turns DocumentReferences into recorded results and written resources."""

    def __init__(
        self,
        *,
        client: FhirClient,
        store: Store,
        extractor: Extractor,
        writer: BundleWriter | None,
        options: ProcessOptions,
        codes: CodeLookup = no_codes,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        persist: bool = True,
    ) -> None:
        self._client = client
        self._store = store
        self._extractor = extractor
        self._writer = writer
        self._opts = options
        self._codes = codes
        self._now = now
        self._persist = persist

    def prepare(self, doc: Mapping[str, Any], tally: Tally) -> Prepared | None:
        """The note's text, or None after recording why it is skipped or has no text."""
        meta = document_meta(doc)
        reason = skip_reason(doc)
        if reason is not None:
            self._skip(doc, meta, reason)
            tally.skipped += 1
            return None
        started = time.monotonic()
        try:
            text = note_text(doc, self._client.read_binary, self._opts.max_note_bytes)
        except NoteTextError as exc:
            log.info("note has no text (%s)", exc.reason)
            self._record(NoteRecord(meta, "no_text", str(exc), timings_ms={"fetch": _ms(started)}))
            tally.no_text += 1
            return None
        return Prepared(doc, meta, text, {"fetch": _ms(started)})

    def extract(self, texts: Sequence[str]) -> list[NoteExtraction | str]:
        """One batch through the engine; on failure each note alone, to isolate the bad one.
        A failed model worker is no note's fault: WorkerError goes up, and the cycle leaves
        the page for the next one."""
        try:
            return list(self._extractor.extract(texts))
        except WorkerError:
            raise
        except (ExtractionError, ValueError) as exc:
            if len(texts) == 1:
                # extraction errors name the problem, never the text
                return [f"extraction failed: {type(exc).__name__}: {exc}"[:500]]
        return [self.extract([t])[0] for t in texts]

    def finish(self, prep: Prepared, result: NoteExtraction | str, tally: Tally) -> None:
        """Map, write and record one extracted note."""
        if isinstance(result, str):
            self._record(NoteRecord(prep.meta, "failed", result, prep.text, self._opts.store_text))
            tally.failed += 1
            return
        engine = self._extractor.info
        try:
            ctx = note_context(prep.doc, prep.text.path)
            bundle = self._bundle(ctx, result.supplements, result.facts, prep.doc)
        except MappingError as exc:
            self._record(NoteRecord(prep.meta, "failed", str(exc), prep.text))
            tally.failed += 1
            return
        started = time.monotonic()
        outputs, pending, error = self._send(prep.meta, bundle)
        record = NoteRecord(
            prep.meta,
            "write_failed" if error else "done",
            error,
            prep.text,
            self._opts.store_text,
            engine,
            result,
            self._supplement_rows(ctx.doc_id, result.supplements, engine.task_version),
            self._fact_rows(ctx.doc_id, result.facts, engine.task_version),
            outputs,
            pending,
            replaced_notes(prep.doc),
            {**prep.timings_ms, "write": _ms(started)},
        )
        self._record(record)
        tally.written += written_count(outputs)
        if error:
            tally.failed += 1
        else:
            tally.processed += 1

    # ---- helpers ------------------------------------------------------------------------

    def _bundle(
        self,
        ctx: NoteContext,
        supplements: Sequence[NoteSupplement],
        facts: Sequence[NoteFact],
        doc: Mapping[str, Any],
    ) -> NoteBundle | None:
        """The note's transaction: outputs, plus retraction of what they no longer support."""
        opts = BundleOptions(
            system=self._opts.identifier_system,
            software=self._opts.software,
            recorded=self._now().isoformat(timespec="milliseconds"),
            replace=self._store.has_other_versions(ctx.doc_id, ctx.version_id),
            codes=self._codes,
        )
        retract = self._store.live_outputs([ctx.doc_id, *replaced_notes(doc)])
        return note_bundle(ctx, supplements, facts, self._extractor.info, opts, retract)

    def _send(
        self, meta: DocumentMeta, bundle: NoteBundle | None, final_state: str = "done"
    ) -> tuple[tuple[OutputRow, ...], dict[str, Any] | None, str | None]:
        """(output rows, queued payload, error): the write and the server's answers.

        ``final_state`` is what the note becomes once a queued retry succeeds.
        """
        if bundle is None or self._writer is None:
            return (), None, None
        name = f"{meta.doc_id}_{meta.version_id}"
        try:
            answers = self._writer.write(name, bundle.bundle)
        except FhirError as exc:
            # the server's message can quote resource content: full text at DEBUG only
            log.warning("write-back failed (HTTP %s); queued for the next cycle", exc.status)
            log.debug("write-back of %s failed: %s", name, exc)
            failed = [(None, exc.status)] * len(bundle.entries)
            return (
                output_rows(bundle.entries, failed),
                pending_payload(name, bundle.bundle, bundle.entries, final_state),
                str(exc),
            )
        return output_rows(bundle.entries, answers), None, None

    def _skip(self, doc: Mapping[str, Any], meta: DocumentMeta, reason: str) -> None:
        """Record the skip; a note now entered in error has its earlier outputs retracted."""
        outputs: tuple[OutputRow, ...] = ()
        pending: dict[str, Any] | None = None
        error: str | None = None
        if doc.get("status") == "entered-in-error":
            try:
                bundle = self._bundle(note_context(doc, "DocumentReference"), (), (), doc)
            except MappingError as exc:
                bundle, error = None, str(exc)
            if bundle is not None:
                outputs, pending, error = self._send(meta, bundle, final_state="skipped")
        state = "write_failed" if pending else "skipped"
        self._record(NoteRecord(meta, state, error or reason, outputs=outputs, pending=pending))

    def _supplement_rows(
        self, doc_id: str, supplements: Sequence[NoteSupplement], task_version: str
    ) -> tuple[SupplementRow, ...]:
        return tuple(
            SupplementRow(
                s.normalized,
                s.status,
                s.status_detail,
                statement_status(s.status, s.status_detail),
                tuple((m.start, m.end) for m in s.mentions),
                statement_key(doc_id, s.normalized, task_version),
            )
            for s in supplements
        )

    def _fact_rows(
        self, doc_id: str, facts: Sequence[NoteFact], task_version: str
    ) -> tuple[FactRow, ...]:
        return tuple(
            FactRow(
                f.supplement,
                f.relation,
                f.event,
                (f.supplement_span.start, f.supplement_span.end),
                (f.event_span.start, f.event_span.end),
                observation_key(doc_id, f.supplement, f.relation, f.event, task_version)
                if f.relation == "adverse_event"
                else None,
            )
            for f in facts
        )

    def _record(self, record: NoteRecord) -> None:
        if self._persist:
            self._store.record_note(record)
