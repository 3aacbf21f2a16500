"""Postgres persistence of the FHIR adapter: watermark, note versions, results, write-back log.

Bound to one connection for a sync cycle (the advisory lock is a session lock). Every method
runs in its own transaction, so a note is recorded atomically and the watermark moves only
in :meth:`advance_watermark`, after a page is done. Tables: ``migrations/0003_sync_state.sql``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from adapter.note_text import NoteText
from extraction.api import EngineInfo, NoteExtraction
from mappers.bundle import Retraction

log = logging.getLogger(__name__)

Conn = psycopg.Connection[TupleRow]


@dataclass(frozen=True)
class DocumentMeta:
    doc_id: str
    version_id: str
    patient_ref: str | None = None
    encounter_ref: str | None = None
    note_date: datetime | None = None
    last_updated: datetime | None = None
    doc_status: str | None = None


@dataclass(frozen=True)
class SupplementRow:
    supplement: str
    usage_status: str
    status_detail: str | None
    fhir_status: str
    mentions: tuple[tuple[int, int], ...]
    output_key: str


@dataclass(frozen=True)
class FactRow:
    supplement: str
    relation: str
    event: str
    supplement_span: tuple[int, int]
    event_span: tuple[int, int]
    output_key: str | None


@dataclass(frozen=True)
class OutputRow:
    """One transaction entry and the server's answer (server_id/http_status None: not sent)."""

    resource_type: str
    key: str
    action: str
    resource: dict[str, Any]
    supplement: str | None = None
    server_id: str | None = None
    http_status: int | None = None


@dataclass(frozen=True)
class NoteRecord:
    """Everything learned about one note version, recorded in one transaction."""

    meta: DocumentMeta
    state: str
    reason: str | None = None
    text: NoteText | None = None
    store_text: bool = False
    engine: EngineInfo | None = None
    extraction: NoteExtraction | None = None
    supplements: tuple[SupplementRow, ...] = ()
    facts: tuple[FactRow, ...] = ()
    outputs: tuple[OutputRow, ...] = ()
    pending: dict[str, Any] | None = None
    retire: tuple[str, ...] = ()
    timings_ms: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingWrite:
    doc_id: str
    version_id: str
    payload: dict[str, Any]
    attempts: int


def result_json(extraction: NoteExtraction, keep_text: bool) -> dict[str, Any]:
    """The engine output as stored: the note text itself only when configured."""
    out = extraction.to_json()
    if not keep_text:
        out.pop("text", None)
    return out


class Store:
    """The adapter's tables for one FHIR source, on one connection."""

    def __init__(self, conn: Conn, source: str) -> None:
        self._conn = conn
        self.source = source

    @contextmanager
    def source_lock(self) -> Iterator[bool]:
        """A session advisory lock per source: True if this worker holds it for the block."""
        key = f"dsfhir.sync:{self.source}"
        with self._conn.transaction():
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)
            ).fetchone()
        got = bool(row and row[0])
        try:
            yield got
        finally:
            if got:
                with self._conn.transaction():
                    self._conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))

    def watermark(self) -> datetime | None:
        with self._conn.transaction():
            row = self._conn.execute(
                "SELECT watermark FROM sync_state WHERE source = %s", (self.source,)
            ).fetchone()
        return row[0] if row else None

    def advance_watermark(self, value: datetime) -> None:
        """Move the watermark forward (never back), after a page was fully processed."""
        with self._conn.transaction():
            self._conn.execute(
                """INSERT INTO sync_state (source, watermark) VALUES (%s, %s)
                   ON CONFLICT (source) DO UPDATE
                   SET watermark = GREATEST(sync_state.watermark, EXCLUDED.watermark),
                       updated_at = now()""",
                (self.source, value),
            )

    def seen_versions(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (doc_id, version_id) pairs were already recorded."""
        if not pairs:
            return set()
        with self._conn.transaction():
            rows = self._conn.execute(
                """SELECT doc_id, version_id FROM document_versions
                   WHERE source = %s AND (doc_id, version_id) IN
                         (SELECT * FROM unnest(%s::text[], %s::text[]))""",
                (self.source, [p[0] for p in pairs], [p[1] for p in pairs]),
            ).fetchall()
        return {(str(a), str(b)) for a, b in rows}

    def has_other_versions(self, doc_id: str, version_id: str) -> bool:
        """True when another version of the note was seen: its outputs are updated in place."""
        with self._conn.transaction():
            row = self._conn.execute(
                """SELECT 1 FROM document_versions
                   WHERE source = %s AND doc_id = %s AND version_id <> %s LIMIT 1""",
                (self.source, doc_id, version_id),
            ).fetchone()
            if row is None:
                row = self._conn.execute(
                    "SELECT 1 FROM fhir_outputs WHERE source = %s AND doc_id = %s LIMIT 1",
                    (self.source, doc_id),
                ).fetchone()
        return row is not None

    def live_outputs(self, doc_ids: Iterable[str]) -> list[Retraction]:
        """Resources written for these notes and not retracted (candidates for retraction)."""
        with self._conn.transaction():
            rows = self._conn.execute(
                """SELECT resource_type, output_key, resource FROM fhir_outputs
                   WHERE source = %s AND doc_id = ANY(%s) AND NOT retracted
                   ORDER BY resource_type, output_key""",
                (self.source, list(doc_ids)),
            ).fetchall()
        return [Retraction(str(t), str(k), dict(r)) for t, k, r in rows]

    # ---- recording --------------------------------------------------------------------

    def record_note(self, rec: NoteRecord) -> None:
        """One note version and all that came of it, atomically."""
        with self._conn.transaction():
            self._upsert_version(rec)
            self._retire(rec)
            if rec.extraction is not None and rec.engine is not None:
                self._insert_results(rec.meta, rec.engine, rec.extraction, rec.store_text)
            self._insert_lists(rec)
            self._record_outputs(rec.meta.doc_id, rec.meta.version_id, rec.outputs, rec.reason)

    def _upsert_version(self, rec: NoteRecord) -> None:
        m, t = rec.meta, rec.text
        self._conn.execute(
            """INSERT INTO document_versions
               (source, doc_id, version_id, patient_ref, encounter_ref, note_date, last_updated,
                doc_status, state, reason, content_type, text_sha256, text_chars, note_text,
                attempts, pending_bundle, fetch_ms, extract_ms, write_ms)
               VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)
               ON CONFLICT (source, doc_id, version_id) DO UPDATE SET
                 state = EXCLUDED.state, reason = EXCLUDED.reason,
                 attempts = EXCLUDED.attempts, pending_bundle = EXCLUDED.pending_bundle,
                 current = true, processed_at = now()""",
            (
                self.source, m.doc_id, m.version_id, m.patient_ref, m.encounter_ref,
                m.note_date, m.last_updated, m.doc_status, rec.state, rec.reason,
                t.content_type if t else None, t.sha256 if t else None,
                len(t.text) if t else None, t.text if t and rec.store_text else None,
                1 if rec.outputs or rec.pending else 0,
                Jsonb(rec.pending) if rec.pending is not None else None,
                rec.timings_ms.get("fetch"), rec.timings_ms.get("extract"),
                rec.timings_ms.get("write"),
            ),
        )  # fmt: skip

    def _retire(self, rec: NoteRecord) -> None:
        """Older versions (and replaced notes) stop counting; their queued writes are dropped."""
        doc_id, version = rec.meta.doc_id, rec.meta.version_id
        self._conn.execute(
            """UPDATE document_versions SET current = false,
                   state = CASE WHEN state = 'write_failed' THEN 'abandoned' ELSE state END,
                   reason = CASE WHEN state = 'write_failed'
                                 THEN 'superseded by a newer note version' ELSE reason END,
                   pending_bundle = NULL
               WHERE source = %s AND current
                 AND ((doc_id = %s AND version_id <> %s) OR doc_id = ANY(%s))""",
            (self.source, doc_id, version, list(rec.retire)),
        )

    def _insert_results(
        self, meta: DocumentMeta, engine: EngineInfo, result: NoteExtraction, keep_text: bool
    ) -> None:
        self._conn.execute(
            """INSERT INTO extraction_results
               (source, doc_id, version_id, backend, software_version, task_version,
                base_model, adapter, engine_options, sentences, truncated, result)
               VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)
               ON CONFLICT (source, doc_id, version_id) DO NOTHING""",
            (
                self.source, meta.doc_id, meta.version_id, engine.backend,
                engine.software_version, engine.task_version, engine.base_model,
                engine.adapter, engine.options, result.sentences, result.truncated,
                Jsonb(result_json(result, keep_text)),
            ),
        )  # fmt: skip

    def _insert_lists(self, rec: NoteRecord) -> None:
        ids = (self.source, rec.meta.doc_id, rec.meta.version_id)
        with self._conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO note_supplements
                   (source, doc_id, version_id, supplement, usage_status, status_detail,
                    fhir_status, mentions, output_key)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING""",
                [
                    (*ids, s.supplement, s.usage_status, s.status_detail, s.fhir_status,
                     Jsonb([list(m) for m in s.mentions]), s.output_key)
                    for s in rec.supplements
                ],
            )  # fmt: skip
            cur.executemany(
                """INSERT INTO note_facts
                   (source, doc_id, version_id, supplement, relation, event, supplement_start,
                    supplement_end, event_start, event_end, output_key)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)""",
                [
                    (*ids, f.supplement, f.relation, f.event, *f.supplement_span,
                     *f.event_span, f.output_key)
                    for f in rec.facts
                ],
            )  # fmt: skip

    def _record_outputs(
        self, doc_id: str, version_id: str, outputs: Sequence[OutputRow], error: str | None
    ) -> None:
        for out in outputs:
            sent = out.http_status is not None and out.http_status < 400
            self._conn.execute(
                """INSERT INTO writeback_log (source, doc_id, version_id, resource_type, action,
                       output_key, server_id, http_status, error)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)""",
                (self.source, doc_id, version_id, out.resource_type, out.action, out.key,
                 out.server_id, out.http_status, None if sent else error),
            )  # fmt: skip
            if not sent or out.resource_type == "Provenance":
                continue
            self._conn.execute(
                """INSERT INTO fhir_outputs (source, resource_type, output_key, doc_id, version_id,
                       supplement, server_id, status, retracted, resource)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)
                   ON CONFLICT (source, resource_type, output_key) DO UPDATE SET
                     doc_id = EXCLUDED.doc_id, version_id = EXCLUDED.version_id,
                     supplement = COALESCE(EXCLUDED.supplement, fhir_outputs.supplement),
                     server_id = COALESCE(EXCLUDED.server_id, fhir_outputs.server_id),
                     status = EXCLUDED.status, retracted = EXCLUDED.retracted,
                     resource = CASE WHEN EXCLUDED.retracted THEN fhir_outputs.resource
                                     ELSE EXCLUDED.resource END,
                     updated_at = now()""",
                (self.source, out.resource_type, out.key, doc_id, version_id, out.supplement,
                 out.server_id, out.resource.get("status"), out.action == "retract",
                 Jsonb(out.resource)),
            )  # fmt: skip

    # ---- the write-back retry queue ------------------------------------------------------

    def pending_writes(self, max_attempts: int) -> list[PendingWrite]:
        with self._conn.transaction():
            rows = self._conn.execute(
                """SELECT doc_id, version_id, pending_bundle, attempts FROM document_versions
                   WHERE source = %s AND state = 'write_failed' AND current
                     AND attempts < %s AND pending_bundle IS NOT NULL
                   ORDER BY processed_at""",
                (self.source, max_attempts),
            ).fetchall()
        return [PendingWrite(str(d), str(v), dict(p), int(a)) for d, v, p, a in rows]

    def complete_pending(self, pending: PendingWrite, outputs: Sequence[OutputRow]) -> None:
        with self._conn.transaction():
            self._conn.execute(
                """UPDATE document_versions SET state = %s, reason = NULL,
                       pending_bundle = NULL, attempts = attempts + 1, processed_at = now()
                   WHERE source = %s AND doc_id = %s AND version_id = %s""",
                (pending.payload.get("final_state", "done"), self.source, pending.doc_id,
                 pending.version_id),
            )  # fmt: skip
            self._record_outputs(pending.doc_id, pending.version_id, outputs, None)

    def fail_pending(self, pending: PendingWrite, error: str, max_attempts: int) -> bool:
        """Count a failed retry; True when the note is now abandoned."""
        abandoned = pending.attempts + 1 >= max_attempts
        with self._conn.transaction():
            self._conn.execute(
                """UPDATE document_versions SET attempts = attempts + 1, reason = %s,
                       state = %s, pending_bundle = CASE WHEN %s THEN NULL
                                                         ELSE pending_bundle END
                   WHERE source = %s AND doc_id = %s AND version_id = %s""",
                (error[:1000], "abandoned" if abandoned else "write_failed", abandoned,
                 self.source, pending.doc_id, pending.version_id),
            )  # fmt: skip
        return abandoned

    def record_cycle(self, summary: dict[str, Any], duration_s: float, error: str | None) -> None:
        with self._conn.transaction():
            self._conn.execute(
                """INSERT INTO sync_cycles (source, duration_s, summary, error)
                   VALUES (%s, %s, %s, %s)""",
                (self.source, duration_s, Jsonb(summary), error),
            )
            self._conn.execute(
                """INSERT INTO sync_state (source, last_summary) VALUES (%s, %s)
                   ON CONFLICT (source) DO UPDATE SET last_summary = EXCLUDED.last_summary""",
                (self.source, Jsonb(summary)),
            )
