-- Filters: the one definition of what sources, metadata_contains, date_from, date_to and
-- patient_ids mean. Every search function takes them as named arguments (all default NULL:
-- no filter) and applies them through medpg.document_matches.

-- The filters as one predicate on a document row. Dates are a half-open range:
-- date_from <= document_date < date_to. A plain SQL expression, so PostgreSQL inlines it into
-- each query that calls it (the plans are those of the predicate written out).
CREATE OR REPLACE FUNCTION medpg.document_matches(
    d medpg.documents,
    sources text[], metadata_contains jsonb, date_from timestamptz, date_to timestamptz,
    patient_ids text[])
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT (sources IS NULL OR d.source = ANY (sources))
       AND (metadata_contains IS NULL OR d.metadata @> metadata_contains)
       AND (date_from IS NULL OR d.document_date >= date_from)
       AND (date_to IS NULL OR d.document_date < date_to)
       AND (patient_ids IS NULL OR d.patient_id = ANY (patient_ids))
$$;

-- True when any filter is set: with none, search functions skip the document lookup entirely.
CREATE OR REPLACE FUNCTION medpg.has_filter(
    sources text[], metadata_contains jsonb, date_from timestamptz, date_to timestamptz,
    patient_ids text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT sources IS NOT NULL OR metadata_contains IS NOT NULL OR date_from IS NOT NULL
        OR date_to IS NOT NULL OR patient_ids IS NOT NULL
$$;
