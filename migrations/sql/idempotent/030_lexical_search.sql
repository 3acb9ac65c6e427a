-- Lexical retrieval: BM25 from the postings of 020_lexical_index.sql, and PostgreSQL's own
-- ts_rank / ts_rank_cd over documents.tsv (GIN).
--
-- Query text: any string is safe. It is parsed by to_tsvector, never as tsquery syntax, and each
-- lexeme is quoted (& | ! : * ( ) < > inside it are plain characters). An all-stopword query has
-- no lexemes: or_tsquery returns NULL, which matches nothing, without an error.
--
-- Arguments: every search function checks its numeric arguments with the rules below and raises
-- SQLSTATE 22023 naming itself and the argument for a value outside them, so no call can overflow
-- (22003) or divide by zero. Limits: n, k, candidates 1..10000; k1 and title_weight 1e-6..1000;
-- b 0..1; ts_rank normalization 0..63 (040: ef_search 1..1000; 060: rrf_k 1..10000, weights 0..1000).

-- The one check behind every rule: true when lo <= value <= hi (lo < value when lo_exclusive);
-- otherwise SQLSTATE 22023. NULL and NaN are refused. The message holds the number, never text.
-- plpgsql because SQL cannot raise; IMMUTABLE so that inside a LANGUAGE sql function it is a
-- one-time check (and with constant arguments is decided while planning).
CREATE OR REPLACE FUNCTION medpg.check_range(
    fn text, arg text, value double precision, lo double precision, hi double precision,
    lo_exclusive boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF value IS NULL OR value = 'NaN' OR value > hi OR value < lo OR (lo_exclusive AND value = lo) THEN
        RAISE EXCEPTION '%: % must be % % and at most %, got %', fn, arg,
            CASE WHEN lo_exclusive THEN 'above' ELSE 'at least' END, lo, hi, coalesce(value::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    RETURN true;
END
$$;

-- A count of results or candidates (n, k, candidates): 1..10000; returns the value for LIMIT.
CREATE OR REPLACE FUNCTION medpg.checked_count(fn text, arg text, value integer)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN medpg.check_range(fn, arg, value, 1, 10000) THEN value END $$;

-- BM25 parameters: k1 and title_weight 1e-6..1000 (so tf' >= title_weight * tf_title > 0 and no
-- product under- or overflows), b 0..1 (so the length norm 1 - b + b * dl / avgdl is >= 0).
CREATE OR REPLACE FUNCTION medpg.check_bm25(
    fn text, k1 double precision, b double precision, title_weight double precision)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT medpg.check_range(fn, 'k1', k1, 1e-6, 1000)
       AND medpg.check_range(fn, 'b', b, 0, 1)
       AND medpg.check_range(fn, 'title_weight', title_weight, 1e-6, 1000)
$$;

-- ts_rank's normalization: a bit mask of its documented flags, 0..63.
CREATE OR REPLACE FUNCTION medpg.check_ts_rank_normalization(fn text, arg text, value integer)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT medpg.check_range(fn, arg, value, 0, 63) $$;

CREATE OR REPLACE FUNCTION medpg.query_lexemes(query_text text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT tsvector_to_array(to_tsvector('english'::regconfig, coalesce(query_text, ''))) $$;

CREATE OR REPLACE FUNCTION medpg.or_tsquery(query_text text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT nullif(
        array_to_string(ARRAY(
            SELECT '''' || replace(replace(l, '\', '\\'), '''', '''''') || ''''
            FROM unnest(medpg.query_lexemes(query_text)) l
        ), ' | '),
        '')::tsquery
$$;

-- BM25 of every document matching any query lexeme, BM25F-style title weight:
-- tf' = tf + (w - 1) * tf_title, dl' = dl + (w - 1) * dl_title. Lucene's idf (always positive)
-- with document frequencies counted from the postings just read (exact in the query's snapshot).
-- Every matching document has tf' >= title_weight > 0 (check_bm25), so the denominator
-- tf' + k1 * (1 - b + b * dl' / avgdl) is positive: a title-only document under b = 1 scores too.
-- The argument check is a one-time filter of the final query, evaluated before any row is read.
CREATE OR REPLACE FUNCTION medpg.bm25_scores(
    query_text text, k1 double precision DEFAULT 2.0, b double precision DEFAULT 0.5,
    title_weight double precision DEFAULT 2.0)
RETURNS TABLE (document_id bigint, score double precision)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH q AS (
        SELECT u.lexeme COLLATE "C" AS lexeme, cardinality(u.positions) AS qtf
        FROM unnest(to_tsvector('english'::regconfig, coalesce(query_text, ''))) u
    ),
    -- N and the average length of the corpus the caller can see (row-level security): all of it,
    -- one tenant's, or a patient-bound role's own documents; document frequencies below are
    -- counted from the postings it can see, so both come from the same documents.
    stats AS (
        SELECT greatest(s.documents, 1)::float8 AS n,
               greatest((s.length + (title_weight - 1) * s.title_length) / greatest(s.documents, 1),
                        1e-9)::float8 AS avgdl
        FROM medpg.lexical_scope_stats() s
    ),
    p AS MATERIALIZED (
        SELECT q.lexeme, q.qtf, p.document_id,
               p.tf + (title_weight - 1) * p.tf_title AS tf,
               p.dl + (title_weight - 1) * p.dl_title AS dl
        FROM q JOIN medpg.lexical_postings p ON p.lexeme = q.lexeme
    ),
    idf AS (
        SELECT p.lexeme, ln(1 + (greatest(stats.n - count(*), 0) + 0.5) / (count(*) + 0.5)) AS idf
        FROM p CROSS JOIN stats
        GROUP BY p.lexeme, stats.n
    )
    SELECT p.document_id,
           sum(p.qtf * idf.idf * p.tf * (k1 + 1)
               / (p.tf + k1 * (1 - b + b * p.dl / stats.avgdl)))::float8
    FROM p JOIN idf ON idf.lexeme = p.lexeme CROSS JOIN stats
    WHERE medpg.check_bm25('medpg.bm25_scores', k1, b, title_weight)
    GROUP BY p.document_id
$$;

-- How much of the query BM25 can see: the share of the query's idf mass (qtf * idf, Lucene's idf
-- as in bm25_scores) carried by lexemes that occur in the corpus the caller can see; a lexeme no
-- document has counts with the largest idf (df = 0). 1 when every lexeme occurs somewhere, 0 for a
-- query without lexemes or none that occurs. The 'adaptive' fusion scales the lexical weight by it,
-- so a query whose words the corpus does not use (misspellings, lay words for expert ones) is
-- ranked mostly by the dense leg. Reads one block row per (lexeme, block), as bm25_scores does.
CREATE OR REPLACE FUNCTION medpg.lexical_coverage(query_text text)
RETURNS double precision
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH q AS (
        SELECT u.lexeme COLLATE "C" AS lexeme, cardinality(u.positions) AS qtf
        FROM unnest(to_tsvector('english'::regconfig, coalesce(query_text, ''))) u
    ),
    stats AS (SELECT greatest(s.documents, 1)::float8 AS n FROM medpg.lexical_scope_stats() s),
    df AS (
        SELECT q.qtf,
               coalesce((SELECT sum(cardinality(b.document_ids)) FROM medpg.lexical_blocks b
                         WHERE b.lexeme = q.lexeme), 0)::float8 AS df
        FROM q
    ),
    w AS (
        SELECT df.qtf * ln(1 + (greatest(stats.n - df.df, 0) + 0.5) / (df.df + 0.5)) AS w, df.df > 0 AS seen
        FROM df CROSS JOIN stats
    )
    SELECT coalesce((sum(w.w) FILTER (WHERE w.seen)) / nullif(sum(w.w), 0), 0)::float8 FROM w
$$;

-- Top-n documents by BM25 that pass the filters, ranked 1..n. ``also``: documents whose score the
-- caller wants as well (full-information fusion: a dense candidate gets its real lexical score);
-- they come after the ranked rows with rank NULL and score 0 when no term matches.
-- n is checked by the LIMIT (evaluated first), k1, b and title_weight by bm25_scores.
CREATE OR REPLACE FUNCTION medpg.bm25_search(
    query_text text, n integer DEFAULT 100, k1 double precision DEFAULT 2.0,
    b double precision DEFAULT 0.5, title_weight double precision DEFAULT 2.0,
    also bigint[] DEFAULT NULL,
    sources text[] DEFAULT NULL,
    metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL,
    date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL)
RETURNS TABLE (document_id bigint, rank integer, score double precision)
LANGUAGE sql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan
AS $$
    WITH s AS MATERIALIZED (SELECT * FROM medpg.bm25_scores(query_text, k1, b, title_weight)),
    top AS (
        SELECT s.document_id, s.score FROM s
        WHERE NOT medpg.has_filter(sources, metadata_contains, date_from, date_to, patient_ids)
           OR EXISTS (SELECT 1 FROM medpg.documents fd
                      WHERE fd.id = s.document_id
                        AND medpg.document_matches(fd, sources, metadata_contains, date_from, date_to, patient_ids))
        ORDER BY s.score DESC, s.document_id
        LIMIT medpg.checked_count('medpg.bm25_search', 'n', n)
    ),
    ranked AS (
        SELECT top.document_id, (row_number() OVER (ORDER BY top.score DESC, top.document_id))::integer AS rank,
               top.score
        FROM top
    )
    SELECT * FROM ranked
    UNION ALL
    SELECT a.id, NULL::integer, coalesce(s.score, 0)
    FROM unnest(also) AS a(id)
    LEFT JOIN s ON s.document_id = a.id
    WHERE NOT EXISTS (SELECT 1 FROM ranked r WHERE r.document_id = a.id)
$$;

-- Top-n documents by ts_rank (or ts_rank_cd with cover_density) of the OR-ed query lexemes over the
-- weighted documents.tsv, found through its GIN index; ``also`` as in bm25_search.
-- n is checked by the LIMIT (evaluated first), normalization by a one-time filter below it.
CREATE OR REPLACE FUNCTION medpg.ts_rank_search(
    query_text text, n integer DEFAULT 100, cover_density boolean DEFAULT false,
    normalization integer DEFAULT 0, also bigint[] DEFAULT NULL,
    sources text[] DEFAULT NULL,
    metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL,
    date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL)
RETURNS TABLE (document_id bigint, rank integer, score double precision)
LANGUAGE sql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan
AS $$
    WITH q AS MATERIALIZED (SELECT medpg.or_tsquery(query_text) AS q),
    top AS (
        SELECT d.id AS document_id,
               (CASE WHEN cover_density THEN ts_rank_cd(d.tsv, q.q, normalization)
                     ELSE ts_rank(d.tsv, q.q, normalization) END)::float8 AS score
        FROM q JOIN medpg.documents d ON d.tsv @@ q.q
        WHERE medpg.document_matches(d, sources, metadata_contains, date_from, date_to, patient_ids)
          AND medpg.check_ts_rank_normalization('medpg.ts_rank_search', 'normalization', normalization)
        ORDER BY 2 DESC, 1
        LIMIT medpg.checked_count('medpg.ts_rank_search', 'n', n)
    ),
    ranked AS (
        SELECT top.document_id, (row_number() OVER (ORDER BY top.score DESC, top.document_id))::integer AS rank,
               top.score
        FROM top
    )
    SELECT * FROM ranked
    UNION ALL
    SELECT d.id, NULL::integer,
           coalesce(CASE WHEN NOT d.tsv @@ q.q THEN 0
                         WHEN cover_density THEN ts_rank_cd(d.tsv, q.q, normalization)
                         ELSE ts_rank(d.tsv, q.q, normalization) END, 0)::float8
    FROM q CROSS JOIN medpg.documents d
    WHERE d.id = ANY (also) AND NOT EXISTS (SELECT 1 FROM ranked r WHERE r.document_id = d.id)
$$;
