-- Views for informaticians: query these directly (examples in README "## FHIR adapter").
-- Only current note versions count; a supplement's row comes from its latest note.

-- Each patient's supplements as of their most recent note mentioning them.
CREATE VIEW patient_supplements AS
SELECT DISTINCT ON (d.source, d.patient_ref, s.supplement)
    d.patient_ref     AS patient,
    s.supplement,
    s.fhir_status     AS status,
    s.usage_status,
    s.status_detail,
    d.note_date       AS last_note_date,
    d.doc_id          AS source_note,
    d.version_id      AS source_note_version,
    o.server_id       AS medication_statement_id,
    d.source          AS fhir_source
FROM note_supplements s
JOIN document_versions d USING (source, doc_id, version_id)
LEFT JOIN fhir_outputs o
       ON o.source = s.source AND o.resource_type = 'MedicationStatement'
      AND o.output_key = s.output_key AND NOT o.retracted
WHERE d.current
ORDER BY d.source, d.patient_ref, s.supplement, d.note_date DESC NULLS LAST,
         d.processed_at DESC;

-- Adverse events attributed to a supplement in a note.
CREATE VIEW supplement_adverse_events AS
SELECT
    d.patient_ref     AS patient,
    f.supplement,
    f.event,
    s.fhir_status     AS supplement_status,
    d.note_date,
    d.doc_id          AS source_note,
    d.version_id      AS source_note_version,
    o.server_id       AS observation_id,
    d.source          AS fhir_source
FROM note_facts f
JOIN document_versions d USING (source, doc_id, version_id)
LEFT JOIN note_supplements s
       ON s.source = f.source AND s.doc_id = f.doc_id AND s.version_id = f.version_id
      AND s.supplement = f.supplement
LEFT JOIN fhir_outputs o
       ON o.source = f.source AND o.resource_type = 'Observation'
      AND o.output_key = f.output_key AND NOT o.retracted
WHERE d.current AND f.relation = 'adverse_event';

-- What supplements were taken for, per note.
CREATE VIEW supplement_indications AS
SELECT
    d.patient_ref     AS patient,
    f.supplement,
    f.event           AS indication,
    d.note_date,
    d.doc_id          AS source_note,
    d.version_id      AS source_note_version,
    d.source          AS fhir_source
FROM note_facts f
JOIN document_versions d USING (source, doc_id, version_id)
WHERE d.current AND f.relation = 'indication';
