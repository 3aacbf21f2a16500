-- FHIR adapter state: watermark per source, every note version seen, extraction results,
-- what was written back. No note text is stored unless writeback.store_note_text is on
-- (extraction results keep offsets and the short mention/event strings only).

-- One row per FHIR source (its base URL). The watermark is the newest _lastUpdated (or
-- note date, in fallback mode) of a fully processed and committed search page.
CREATE TABLE sync_state (
    source        text PRIMARY KEY,
    watermark     timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_summary  jsonb
);

-- One row per sync cycle, for monitoring (counts only).
CREATE TABLE sync_cycles (
    id            bigserial PRIMARY KEY,
    source        text        NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    duration_s    double precision NOT NULL,
    summary       jsonb       NOT NULL,
    error         text
);

-- Every DocumentReference version the adapter has seen; (doc_id, version_id) de-duplicates.
-- state: done | skipped (entered-in-error / preliminary) | no_text (reason says why) |
-- failed (extraction or mapping; a new note version is needed) | write_failed (queued in
-- pending_bundle, retried each cycle) | abandoned (write retries exhausted).
-- current: false once a newer version of the note (or a note replacing it) was processed.
CREATE TABLE document_versions (
    source          text        NOT NULL,
    doc_id          text        NOT NULL,
    version_id      text        NOT NULL,
    patient_ref     text,
    encounter_ref   text,
    note_date       timestamptz,
    last_updated    timestamptz,
    doc_status      text,
    state           text        NOT NULL CHECK (state IN
                        ('done', 'skipped', 'no_text', 'failed', 'write_failed', 'abandoned')),
    reason          text,
    current         boolean     NOT NULL DEFAULT true,
    content_type    text,
    text_sha256     text,
    text_chars      integer,
    note_text       text,
    attempts        integer     NOT NULL DEFAULT 0,
    pending_bundle  jsonb,
    fetch_ms        integer,
    extract_ms      integer,
    write_ms        integer,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, doc_id, version_id)
);
CREATE INDEX document_versions_current ON document_versions (source, doc_id) WHERE current;
CREATE INDEX document_versions_pending ON document_versions (source)
    WHERE state = 'write_failed';
CREATE INDEX document_versions_patient ON document_versions (patient_ref);

-- The engine's full output for a note version (entities with offsets, relations, usage,
-- note-level supplements and facts) and which engine produced it.
CREATE TABLE extraction_results (
    source            text        NOT NULL,
    doc_id            text        NOT NULL,
    version_id        text        NOT NULL,
    backend           text        NOT NULL,
    software_version  text        NOT NULL,
    task_version      text        NOT NULL,
    base_model        text        NOT NULL,
    adapter           text        NOT NULL,
    sentences         integer     NOT NULL,
    truncated         boolean     NOT NULL,
    result            jsonb       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, doc_id, version_id),
    FOREIGN KEY (source, doc_id, version_id)
        REFERENCES document_versions ON DELETE CASCADE
);

-- The note-level supplement list, one row per normalised supplement of a note version.
-- output_key is the MedicationStatement's deterministic identifier value.
CREATE TABLE note_supplements (
    source         text    NOT NULL,
    doc_id         text    NOT NULL,
    version_id     text    NOT NULL,
    supplement     text    NOT NULL,
    usage_status   text    NOT NULL,
    status_detail  text,
    fhir_status    text    NOT NULL,
    mentions       jsonb   NOT NULL,
    output_key     text    NOT NULL,
    PRIMARY KEY (source, doc_id, version_id, supplement),
    FOREIGN KEY (source, doc_id, version_id)
        REFERENCES document_versions ON DELETE CASCADE
);

-- Relation facts (indication / adverse_event) of a note version, with offsets.
-- output_key: the Observation's identifier value (adverse events only).
CREATE TABLE note_facts (
    id                bigserial PRIMARY KEY,
    source            text    NOT NULL,
    doc_id            text    NOT NULL,
    version_id        text    NOT NULL,
    supplement        text    NOT NULL,
    relation          text    NOT NULL,
    event             text    NOT NULL,
    supplement_start  integer NOT NULL,
    supplement_end    integer NOT NULL,
    event_start       integer NOT NULL,
    event_end         integer NOT NULL,
    output_key        text,
    FOREIGN KEY (source, doc_id, version_id)
        REFERENCES document_versions ON DELETE CASCADE
);
CREATE INDEX note_facts_version ON note_facts (source, doc_id, version_id);

-- What exists on the FHIR server per deterministic identifier: its server id, the body last
-- sent (needed to retract it with a full PUT), and whether it was retracted.
CREATE TABLE fhir_outputs (
    source         text        NOT NULL,
    resource_type  text        NOT NULL,
    output_key     text        NOT NULL,
    doc_id         text        NOT NULL,
    version_id     text        NOT NULL,
    supplement     text,
    server_id      text,
    status         text,
    retracted      boolean     NOT NULL DEFAULT false,
    resource       jsonb       NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, resource_type, output_key)
);
CREATE INDEX fhir_outputs_doc ON fhir_outputs (source, doc_id);

-- Every entry of every transaction sent (and its answer).
CREATE TABLE writeback_log (
    id             bigserial PRIMARY KEY,
    source         text        NOT NULL,
    doc_id         text        NOT NULL,
    version_id     text        NOT NULL,
    resource_type  text        NOT NULL,
    action         text        NOT NULL,
    output_key     text        NOT NULL,
    server_id      text,
    http_status    integer,
    error          text,
    written_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX writeback_log_doc ON writeback_log (source, doc_id);
