-- medpg.hybrid_search: the whole retrieval in one call, with an explanation per document.
--
--   dense:   top candidates by HNSW (medpg.dense_search), best chunk per document
--   lexical: BM25 (medpg.bm25_search), ts_rank (medpg.ts_rank_search) or, where the server has
--            the extension, pg_textsearch's BM25 index (medpg.textsearch_search; k1, b and
--            title_weight are then the index's, fixed when it was built)
--   each list's candidates are scored by the other retriever too (full-information fusion)
--   fusion:  adaptive (default: weighted min-max, the lexical weight scaled by the query's lexical
--            coverage), weighted min-max, or reciprocal rank fusion (medpg.fuse)
--   feedback (hybrid only): 'rocchio' (default) moves the query vector toward the best chunks of
--            the first fusion's top feedback_docs documents (medpg.feedback_vector), rescores every
--            candidate's evidence chunk with it, re-ranks the dense list and fuses again; 'none'
--            stops after the first fusion. No second index scan: the candidates and their evidence
--            chunks stay those of the first pass. The explanation's dense rank and score are then
--            the moved vector's.
--
-- Returns per document: its rank and fused score, each retriever's rank (NULL when it did not
-- rank the document) and score, the evidence chunk with its character offsets in the body, and
-- the query lexemes the document contains. Invalid choices raise SQLSTATE 22023, and so does any
-- numeric argument outside its range, whatever the mode: k and candidates 1..10000, rrf_k
-- 1..10000, weights 0..1000, feedback_docs 1..1000, feedback_weight 0..1000, and those of
-- bm25_scores, ts_rank_search and dense_search.

-- Fusion parameters: rrf_k 1..10000 (rrf_k + rank stays an integer), weights 0..1000 (finite).
CREATE OR REPLACE FUNCTION medpg.check_fusion(
    fn text, rrf_k integer, dense_weight double precision, lexical_weight double precision)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT medpg.check_range(fn, 'rrf_k', rrf_k, 1, 10000)
       AND medpg.check_range(fn, 'dense_weight', dense_weight, 0, 1000)
       AND medpg.check_range(fn, 'lexical_weight', lexical_weight, 0, 1000)
$$;

-- Pseudo-relevance feedback: feedback_docs 1..1000 documents, feedback_weight 0..1000 (finite).
CREATE OR REPLACE FUNCTION medpg.check_feedback(
    fn text, feedback_docs integer, feedback_weight double precision)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT medpg.check_range(fn, 'feedback_docs', feedback_docs, 1, 1000)
       AND medpg.check_range(fn, 'feedback_weight', feedback_weight, 0, 1000)
$$;

-- Revision 0008 and before defined medpg.hybrid_search without the feedback arguments: drop that
-- signature, or a call naming none of them would be ambiguous.
DROP FUNCTION IF EXISTS medpg.hybrid_search(
    text, vector, integer, text, integer, text, text, integer, double precision, double precision,
    double precision, double precision, double precision, boolean, integer, integer, text[], jsonb,
    timestamptz, timestamptz, text[]);

CREATE OR REPLACE FUNCTION medpg.hybrid_search(
    query_text text,
    query_embedding vector DEFAULT NULL,
    k integer DEFAULT 10,
    mode text DEFAULT 'hybrid',
    candidates integer DEFAULT 100,
    lexical text DEFAULT 'bm25',
    fusion text DEFAULT 'adaptive',
    rrf_k integer DEFAULT 60,
    dense_weight double precision DEFAULT 0.5,
    lexical_weight double precision DEFAULT 0.5,
    k1 double precision DEFAULT 2.0,
    b double precision DEFAULT 0.5,
    title_weight double precision DEFAULT 2.0,
    ts_rank_cover_density boolean DEFAULT false,
    ts_rank_normalization integer DEFAULT 0,
    ef_search integer DEFAULT 200,
    sources text[] DEFAULT NULL,
    metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL,
    date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL,
    feedback text DEFAULT 'rocchio',
    feedback_docs integer DEFAULT 3,
    feedback_weight double precision DEFAULT 1.0)
RETURNS TABLE (
    document_id bigint, rank integer, fused_score double precision,
    dense_rank integer, dense_score double precision,
    lexical_rank integer, lexical_score double precision,
    chunk_id bigint, char_start integer, char_end integer, matched_terms text[])
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    use_dense boolean := mode IN ('hybrid', 'dense');
    use_lexical boolean := mode IN ('hybrid', 'lexical');
    d_ids bigint[] := '{}';
    d_ranks integer[] := '{}';
    d_scores double precision[] := '{}';
    d_chunks bigint[] := '{}';
    d_starts integer[] := '{}';
    d_ends integer[] := '{}';
    l_ids bigint[] := '{}';
    l_ranks integer[] := '{}';
    l_scores double precision[] := '{}';
    x_ids bigint[];
    lexemes text[] := medpg.query_lexemes(query_text);
    -- the candidates: one entry per document some list ranked, ordered by document id
    u_doc bigint[];
    u_dr integer[];
    u_ds double precision[];
    u_lr integer[];
    u_ls double precision[];
    u_chunk bigint[];
    u_cs integer[];
    u_ce integer[];
    coverage double precision := 1.0;
    moved vector;
BEGIN
    IF mode IS NULL OR mode NOT IN ('hybrid', 'dense', 'lexical') THEN
        RAISE EXCEPTION 'medpg.hybrid_search: mode must be hybrid, dense or lexical, got %', mode
            USING ERRCODE = '22023';
    END IF;
    IF lexical IS NULL OR lexical NOT IN ('bm25', 'ts_rank', 'pg_textsearch') THEN
        RAISE EXCEPTION 'medpg.hybrid_search: lexical must be bm25, ts_rank or pg_textsearch, got %', lexical
            USING ERRCODE = '22023';
    END IF;
    IF fusion IS NULL OR fusion NOT IN ('adaptive', 'weighted', 'rrf') THEN
        RAISE EXCEPTION 'medpg.hybrid_search: fusion must be adaptive, weighted or rrf, got %', fusion
            USING ERRCODE = '22023';
    END IF;
    IF feedback IS NULL OR feedback NOT IN ('rocchio', 'none') THEN
        RAISE EXCEPTION 'medpg.hybrid_search: feedback must be rocchio or none, got %', feedback
            USING ERRCODE = '22023';
    END IF;
    PERFORM medpg.checked_count('medpg.hybrid_search', 'k', k),
            medpg.checked_count('medpg.hybrid_search', 'candidates', candidates),
            medpg.check_fusion('medpg.hybrid_search', rrf_k, dense_weight, lexical_weight),
            medpg.check_feedback('medpg.hybrid_search', feedback_docs, feedback_weight),
            medpg.check_bm25('medpg.hybrid_search', k1, b, title_weight),
            medpg.check_ts_rank_normalization('medpg.hybrid_search', 'ts_rank_normalization',
                                              ts_rank_normalization),
            medpg.check_ef_search('medpg.hybrid_search', 'ef_search', ef_search);
    IF use_dense AND query_embedding IS NULL THEN
        RAISE EXCEPTION 'medpg.hybrid_search: mode % needs query_embedding', mode USING ERRCODE = '22004';
    END IF;

    IF use_dense THEN
        SELECT coalesce(array_agg(s.document_id ORDER BY s.rank), '{}'),
               coalesce(array_agg(s.rank ORDER BY s.rank), '{}'),
               coalesce(array_agg(s.score ORDER BY s.rank), '{}'),
               coalesce(array_agg(s.chunk_id ORDER BY s.rank), '{}'),
               coalesce(array_agg(s.char_start ORDER BY s.rank), '{}'),
               coalesce(array_agg(s.char_end ORDER BY s.rank), '{}')
          INTO d_ids, d_ranks, d_scores, d_chunks, d_starts, d_ends
        FROM medpg.dense_search(query_embedding, candidates, ef_search, NULL, sources => sources, metadata_contains => metadata_contains, date_from => date_from, date_to => date_to, patient_ids => patient_ids) s;
    END IF;

    IF use_lexical THEN
        -- In hybrid mode the dense candidates get their lexical score too (full-information fusion).
        x_ids := CASE WHEN use_dense THEN d_ids END;
        IF lexical = 'bm25' THEN
            SELECT coalesce(array_agg(s.document_id ORDER BY s.rank NULLS LAST, s.document_id), '{}'),
                   coalesce(array_agg(s.rank ORDER BY s.rank NULLS LAST, s.document_id), '{}'),
                   coalesce(array_agg(s.score ORDER BY s.rank NULLS LAST, s.document_id), '{}')
              INTO l_ids, l_ranks, l_scores
            FROM medpg.bm25_search(query_text, candidates, k1, b, title_weight, x_ids, sources => sources, metadata_contains => metadata_contains, date_from => date_from, date_to => date_to, patient_ids => patient_ids) s;
        ELSIF lexical = 'pg_textsearch' THEN
            -- The optional backend (035_pg_textsearch.sql): raises 0A000 where it is missing.
            SELECT coalesce(array_agg(s.document_id ORDER BY s.rank NULLS LAST, s.document_id), '{}'),
                   coalesce(array_agg(s.rank ORDER BY s.rank NULLS LAST, s.document_id), '{}'),
                   coalesce(array_agg(s.score ORDER BY s.rank NULLS LAST, s.document_id), '{}')
              INTO l_ids, l_ranks, l_scores
            FROM medpg.textsearch_search(query_text, candidates, x_ids, sources => sources, metadata_contains => metadata_contains, date_from => date_from, date_to => date_to, patient_ids => patient_ids) s;
        ELSE
            SELECT coalesce(array_agg(s.document_id ORDER BY s.rank NULLS LAST, s.document_id), '{}'),
                   coalesce(array_agg(s.rank ORDER BY s.rank NULLS LAST, s.document_id), '{}'),
                   coalesce(array_agg(s.score ORDER BY s.rank NULLS LAST, s.document_id), '{}')
              INTO l_ids, l_ranks, l_scores
            FROM medpg.ts_rank_search(query_text, candidates, ts_rank_cover_density, ts_rank_normalization,
                                      x_ids, sources => sources, metadata_contains => metadata_contains, date_from => date_from, date_to => date_to, patient_ids => patient_ids) s;
        END IF;
    END IF;

    IF use_dense AND use_lexical THEN
        -- Lexical candidates the dense list missed: their exact similarity and best chunk.
        SELECT d_ids || coalesce(array_agg(s.document_id), '{}'),
               d_ranks || coalesce(array_agg(NULL::integer), '{}'),
               d_scores || coalesce(array_agg(s.score), '{}'),
               d_chunks || coalesce(array_agg(s.chunk_id), '{}'),
               d_starts || coalesce(array_agg(s.char_start), '{}'),
               d_ends || coalesce(array_agg(s.char_end), '{}')
          INTO d_ids, d_ranks, d_scores, d_chunks, d_starts, d_ends
        FROM medpg.dense_document_scores(
                 query_embedding,
                 ARRAY(SELECT u FROM unnest(l_ids) u EXCEPT SELECT u FROM unnest(d_ids) u)) s;
    END IF;

    -- Only documents some list ranked; the others were there for their scores only.
    SELECT coalesce(array_agg(u.doc ORDER BY u.doc), '{}'), coalesce(array_agg(u.dr ORDER BY u.doc), '{}'),
           coalesce(array_agg(u.ds ORDER BY u.doc), '{}'), coalesce(array_agg(u.lr ORDER BY u.doc), '{}'),
           coalesce(array_agg(u.ls ORDER BY u.doc), '{}'), coalesce(array_agg(u.chunk ORDER BY u.doc), '{}'),
           coalesce(array_agg(u.cs ORDER BY u.doc), '{}'), coalesce(array_agg(u.ce ORDER BY u.doc), '{}')
      INTO u_doc, u_dr, u_ds, u_lr, u_ls, u_chunk, u_cs, u_ce
    FROM (
        SELECT coalesce(dn.doc, lx.doc) AS doc, dn.dr, dn.ds, lx.lr, lx.ls, dn.chunk, dn.cs, dn.ce
        FROM unnest(d_ids, d_ranks, d_scores, d_chunks, d_starts, d_ends) AS dn(doc, dr, ds, chunk, cs, ce)
        FULL JOIN unnest(l_ids, l_ranks, l_scores) AS lx(doc, lr, ls) ON lx.doc = dn.doc
        WHERE dn.dr IS NOT NULL OR lx.lr IS NOT NULL
    ) u;

    IF mode = 'hybrid' AND fusion = 'adaptive' THEN
        coverage := medpg.lexical_coverage(query_text);
    END IF;

    IF mode = 'hybrid' AND feedback = 'rocchio' AND feedback_weight > 0 AND cardinality(u_doc) > 0 THEN
        -- Rocchio: the first fusion's top documents (their best chunks) move the query vector ...
        moved := medpg.feedback_vector(query_embedding, ARRAY(
            SELECT x.chunk
            FROM medpg.fuse(u_doc, u_dr, u_ds, u_lr, u_ls, fusion, rrf_k, dense_weight, lexical_weight,
                            coverage) f
            JOIN unnest(u_doc, u_chunk) AS x(doc, chunk) ON x.doc = f.document_id
            WHERE x.chunk IS NOT NULL
            ORDER BY f.fused_score DESC, f.document_id
            LIMIT feedback_docs), feedback_weight);
        -- ... which rescores every candidate through its evidence chunk (its best for the query as
        -- given: one vector per document to read); the dense list keeps its documents, ranked anew.
        SELECT array_agg(y.ds ORDER BY y.doc), array_agg(y.dr ORDER BY y.doc)
          INTO u_ds, u_dr
        FROM (
            SELECT x.doc, coalesce(s.score, x.ds) AS ds,
                   CASE WHEN x.dr IS NOT NULL THEN
                       (row_number() OVER (PARTITION BY x.dr IS NULL
                                           ORDER BY coalesce(s.score, x.ds) DESC NULLS LAST, x.doc))::integer
                   END AS dr
            FROM unnest(u_doc, u_dr, u_ds, u_chunk) AS x(doc, dr, ds, chunk)
            LEFT JOIN medpg.dense_chunk_scores(
                moved, ARRAY(SELECT c FROM unnest(u_chunk) c WHERE c IS NOT NULL)) s ON s.chunk_id = x.chunk
        ) y;
    END IF;

    RETURN QUERY
    WITH u AS (
        SELECT * FROM unnest(u_doc, u_dr, u_ds, u_lr, u_ls, u_chunk, u_cs, u_ce)
            AS x(doc, dr, ds, lr, ls, chunk, cs, ce)
    ),
    fz AS (
        SELECT x.document_id, x.fused_score
        FROM medpg.fuse(u_doc, u_dr, u_ds, u_lr, u_ls, fusion, rrf_k, dense_weight, lexical_weight,
                        coverage) x
        WHERE mode = 'hybrid'
    ),
    f AS (
        SELECT u.*,
               CASE WHEN mode = 'dense' THEN u.ds
                    WHEN mode = 'lexical' THEN u.ls
                    ELSE fz.fused_score END AS fused
        FROM u LEFT JOIN fz ON fz.document_id = u.doc
    ),
    top AS (
        SELECT f.* FROM f ORDER BY f.fused DESC NULLS LAST, f.doc LIMIT k
    ),
    -- Evidence passage when there is no dense score: of a document's several chunks, the one
    -- where the query's lexemes (stems) occur most often, counted as substrings of the lower-
    -- cased text (no parsing at query time; a one-chunk document needs no ranking).
    lexical_evidence AS MATERIALIZED (
        SELECT DISTINCT ON (x.document_id) x.document_id, x.id, x.char_start, x.char_end
        FROM (
            SELECT c.document_id, c.id, c.char_start, c.char_end, c.ordinal, lower(c.text) AS text,
                   count(*) OVER (PARTITION BY c.document_id) AS n
            FROM top JOIN medpg.chunks c ON c.document_id = top.doc
            WHERE top.chunk IS NULL
        ) x
        ORDER BY x.document_id,
                 CASE WHEN x.n > 1 THEN (
                     SELECT sum((length(x.text) - length(replace(x.text, l, ''))) / length(l))
                     FROM unnest(lexemes) l WHERE length(l) > 0)
                 END DESC NULLS LAST,
                 x.ordinal
    )
    SELECT top.doc,
           (row_number() OVER (ORDER BY top.fused DESC NULLS LAST, top.doc))::integer,
           top.fused, top.dr, top.ds, top.lr, top.ls,
           coalesce(top.chunk, le.id), coalesce(top.cs, le.char_start), coalesce(top.ce, le.char_end),
           ARRAY(SELECT b.lexeme::text
                 FROM medpg.lexical_documents ld
                 JOIN medpg.lexical_blocks b
                   ON b.block_id = ld.block_id AND b.lexeme = ANY (lexemes::text[] COLLATE "C")
                 WHERE ld.document_id = top.doc AND top.doc = ANY (b.document_ids)
                 ORDER BY b.lexeme)
    FROM top LEFT JOIN lexical_evidence le ON le.document_id = top.doc
    ORDER BY 2;
END
$$;

COMMENT ON FUNCTION medpg.hybrid_search IS
    'Dense + lexical (bm25, ts_rank or pg_textsearch) candidates, fused (adaptive, weighted or rrf) with optional Rocchio feedback, with per-document ranks, scores, evidence chunk and matched lexemes';
