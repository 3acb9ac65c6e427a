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
-- ranked mostly by the dense leg. Reads the blocks' n_docs only (an index-only scan).
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
               coalesce((SELECT sum(b.n_docs) FROM medpg.lexical_blocks b
                         WHERE b.lexeme = q.lexeme), 0)::float8 AS df
        FROM q
    ),
    w AS (
        SELECT df.qtf * ln(1 + (greatest(stats.n - df.df, 0) + 0.5) / (df.df + 0.5)) AS w, df.df > 0 AS seen
        FROM df CROSS JOIN stats
    )
    SELECT coalesce((sum(w.w) FILTER (WHERE w.seen)) / nullif(sum(w.w), 0), 0)::float8 FROM w
$$;

-- Top-n documents by BM25 that pass the filters, ranked 1..n, scoring every posting of every query
-- lexeme: the exact reference medpg.bm25_search must agree with, and what it runs itself when the
-- query's lexemes have few postings. ``also``: documents whose score the caller wants as well
-- (full-information fusion: a dense candidate gets its real lexical score); they come after the
-- ranked rows with rank NULL and score 0 when no term matches.
-- n is checked by the LIMIT (evaluated first), k1, b and title_weight by bm25_scores.
CREATE OR REPLACE FUNCTION medpg.bm25_search_exact(
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
        LIMIT medpg.checked_count('medpg.bm25_search_exact', 'n', n)
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

-- Top-n documents by BM25, exactly as medpg.bm25_search_exact ranks them, without scoring every
-- posting: block-max pruning over medpg.lexical_blocks.
--
-- A block_id names one set of at most 1,000 documents, the same set in every lexeme's row, and each
-- row keeps the largest tf and tf_title and the smallest dl and dl_title of its documents. A
-- lexeme's BM25 contribution grows with tf' and shrinks with dl', so
--     bound(lexeme, block) = qtf * idf * tf'max * (k1 + 1) / (tf'max + k1 * (1 - b + b * dl'min / avgdl))
-- is at least the contribution to any document of the block, and a block's summed bound over the
-- query's lexemes is at least the score of any of its documents. These bounds come from the
-- primary key's INCLUDE columns (an index-only scan: no array is read). Blocks are then scored
-- whole (every query lexeme's row of the block), best bound first, in batches of 8, 16, 32, ...
-- documents' blocks, keeping the n best scores; once n documents are held and the next block's
-- bound is below the n-th score, no unscored document can enter the top n, and the search stops.
-- The answer equals the exhaustive one (same documents, same scores, same ties: a block whose bound
-- equals the n-th score is still read), which tests check against bm25_search_exact.
--
-- When the query's lexemes have at most medpg.bm25_exhaustive_postings postings together (a
-- setting, default 20000; 0 prunes always), scoring them all is as fast and the exact function
-- runs instead, except with a patient filter. Filters: a patient filter skips other patients'
-- blocks before any bound is summed (a block holds one patient), so one patient's search reads
-- that patient's blocks only; other filters are checked per document as it is scored, so the
-- n-th score is that of the n-th matching document. Row-level security hides whole blocks, and
-- N, avgdl and document frequencies are those of what the caller sees, as in bm25_scores.
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
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    lim integer := medpg.checked_count('medpg.bm25_search', 'n', n);
    valid boolean := medpg.check_bm25('medpg.bm25_search', k1, b, title_weight);
    filtered boolean := medpg.has_filter(sources, metadata_contains, date_from, date_to, patient_ids);
    exhaustive bigint := coalesce(nullif(current_setting('medpg.bm25_exhaustive_postings', true), '')::bigint,
                                  20000);
    corpus_n double precision;
    avgdl double precision;
    lexemes text[];
    weights double precision[];     -- qtf * idf per lexeme
    postings bigint;
    blocks bigint[];
    bounds double precision[];
    top_ids bigint[] := '{}';
    top_scores double precision[] := '{}';
    theta double precision := '-Infinity';
    i integer := 1;
    j integer;
    step integer := 8;
BEGIN
    SELECT greatest(s.documents, 1),
           greatest((s.length + (title_weight - 1) * s.title_length) / greatest(s.documents, 1), 1e-9)
      INTO corpus_n, avgdl
    FROM medpg.lexical_scope_stats() s;

    -- Each lexeme's document frequency from its rows' n_docs (what the caller can see).
    SELECT array_agg(q.lexeme ORDER BY q.lexeme),
           array_agg(q.qtf * ln(1 + (greatest(corpus_n - q.df, 0) + 0.5) / (q.df + 0.5)) ORDER BY q.lexeme),
           sum(q.df)
      INTO lexemes, weights, postings
    FROM (
        SELECT u.lexeme COLLATE "C" AS lexeme, cardinality(u.positions) AS qtf,
               (SELECT coalesce(sum(lb.n_docs), 0) FROM medpg.lexical_blocks lb
                WHERE lb.lexeme = u.lexeme COLLATE "C") AS df
        FROM unnest(to_tsvector('english'::regconfig, coalesce(query_text, ''))) u
    ) q
    WHERE q.df > 0;

    -- Few postings: score them all (with a patient filter the exact function still reads every
    -- posting of the lexemes, so the pruned path, which reads the patients' blocks only, runs).
    IF postings IS NULL OR (postings <= exhaustive AND patient_ids IS NULL) THEN
        RETURN QUERY
        SELECT x.document_id, x.rank, x.score
        FROM medpg.bm25_search_exact(query_text, lim, k1, b, title_weight, also, sources,
                                     metadata_contains, date_from, date_to, patient_ids) x;
        RETURN;
    END IF;

    -- Every block holding a query lexeme, by its summed bound, largest first. The factor 1 + 1e-9
    -- covers rounding: the bound and a score are the same formula evaluated in a different order.
    SELECT array_agg(x.block_id ORDER BY x.ub DESC, x.block_id), array_agg(x.ub ORDER BY x.ub DESC, x.block_id)
      INTO blocks, bounds
    FROM (
        SELECT lb.block_id,
               sum(q.w * t.tf * (k1 + 1) / (t.tf + k1 * (1 - b + b * t.dl / avgdl))) * (1 + 1e-9) AS ub
        FROM unnest(lexemes, weights) AS q(lexeme, w)
        JOIN medpg.lexical_blocks lb ON lb.lexeme = q.lexeme
        CROSS JOIN LATERAL (
            SELECT lb.max_tf + greatest(title_weight - 1, 0) * lb.max_tf_title AS tf,
                   CASE WHEN title_weight >= 1 THEN lb.min_dl + (title_weight - 1) * lb.min_dl_title
                        ELSE title_weight * lb.min_dl END AS dl
        ) t
        WHERE patient_ids IS NULL OR lb.patient_id = ANY (patient_ids)
        GROUP BY lb.block_id
    ) x;

    WHILE i <= coalesce(cardinality(blocks), 0) LOOP
        EXIT WHEN cardinality(top_ids) >= lim AND bounds[i] < theta;
        j := least(i + step - 1, cardinality(blocks));
        WHILE j > i AND cardinality(top_ids) >= lim AND bounds[j] < theta LOOP
            j := j - 1;
        END LOOP;
        SELECT array_agg(t.id ORDER BY t.s DESC, t.id), array_agg(t.s ORDER BY t.s DESC, t.id)
          INTO top_ids, top_scores
        FROM (
            SELECT a.id, a.s
            FROM (
                SELECT h.id, h.s FROM unnest(top_ids, top_scores) AS h(id, s)
                UNION ALL
                SELECT g.id, g.s
                FROM (
                    SELECT p.id,
                           sum(q.w * (p.tf + (title_weight - 1) * p.tf_title) * (k1 + 1)
                               / ((p.tf + (title_weight - 1) * p.tf_title)
                                  + k1 * (1 - b + b * (p.dl + (title_weight - 1) * p.dl_title) / avgdl)))::float8 AS s
                    FROM unnest(lexemes, weights) AS q(lexeme, w)
                    JOIN medpg.lexical_blocks lb ON lb.lexeme = q.lexeme AND lb.block_id = ANY (blocks[i:j])
                    CROSS JOIN LATERAL unnest(lb.document_ids, lb.tf, lb.tf_title, lb.dl, lb.dl_title)
                        AS p(id, tf, tf_title, dl, dl_title)
                    GROUP BY p.id
                ) g
                WHERE NOT filtered
                   OR EXISTS (SELECT 1 FROM medpg.documents fd
                              WHERE fd.id = g.id
                                AND medpg.document_matches(fd, sources, metadata_contains, date_from, date_to,
                                                           patient_ids))
            ) a
            ORDER BY a.s DESC, a.id
            LIMIT lim
        ) t;
        top_ids := coalesce(top_ids, '{}');
        top_scores := coalesce(top_scores, '{}');
        IF cardinality(top_ids) >= lim THEN
            theta := top_scores[lim];
        END IF;
        i := j + 1;
        step := least(step * 2, 512);
    END LOOP;

    RETURN QUERY
    WITH ranked AS (
        SELECT r.id AS document_id, r.ord::integer AS rank, r.s AS score
        FROM unnest(top_ids, top_scores) WITH ORDINALITY AS r(id, s, ord)
    )
    SELECT * FROM ranked
    UNION ALL
    -- The score of each wanted document not ranked: its postings in its own block's rows.
    SELECT a.id, NULL::integer,
           coalesce((
               SELECT sum(q.w * x.tf * (k1 + 1) / (x.tf + k1 * (1 - b + b * x.dl / avgdl)))
               FROM medpg.lexical_documents ld
               CROSS JOIN unnest(lexemes, weights) AS q(lexeme, w)
               JOIN medpg.lexical_blocks lb ON lb.lexeme = q.lexeme AND lb.block_id = ld.block_id
               CROSS JOIN LATERAL (SELECT array_position(lb.document_ids, a.id) AS k) pos
               CROSS JOIN LATERAL (
                   SELECT lb.tf[pos.k] + (title_weight - 1) * lb.tf_title[pos.k] AS tf,
                          lb.dl[pos.k] + (title_weight - 1) * lb.dl_title[pos.k] AS dl
               ) x
               WHERE ld.document_id = a.id AND pos.k IS NOT NULL
           ), 0)::float8
    FROM unnest(also) AS a(id)
    WHERE NOT EXISTS (SELECT 1 FROM ranked r WHERE r.document_id = a.id)
      AND valid;
END
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
