-- Dense retrieval over medpg.chunks.embedding (pgvector HNSW).
--
-- The similarity is medpg.embedding_space.similarity, fixed when the schema was created:
-- 'ip' (inner product, MedCPT) or 'cosine' (MiniLM). The HNSW index was built with the matching
-- operator class, so the index scan must order by that operator: <#> (negative inner product) or
-- <=> (cosine distance). Scores are "higher is better": -(a <#> b), or 1 - (a <=> b).
-- The index is built by medpg.embedding.index from embedding_space's index_storage, hnsw_m and
-- hnsw_ef_construction: over the column ('vector') or over embedding::halfvec(D) ('halfvec').
-- Only chunks embedded by the model named in embedding_space.model are searched.

-- The score of a distance under a similarity.
CREATE OR REPLACE FUNCTION medpg.similarity_score(distance double precision, similarity text)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN similarity = 'cosine' THEN 1 - distance ELSE -distance END $$;

-- The distance the HNSW index orders by.
CREATE OR REPLACE FUNCTION medpg.vector_distance(a vector, b vector, similarity text)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN similarity = 'cosine' THEN a <=> b ELSE a <#> b END $$;

-- Exact similarity of each given document's best chunk embedded by the current model. The
-- distance is computed once per chunk (OFFSET 0 keeps the subquery from being flattened, which
-- would compute it for the sort key and again for the score, reading the TOASTed vector twice).
CREATE OR REPLACE FUNCTION medpg.dense_document_scores(query_embedding vector, document_ids bigint[])
RETURNS TABLE (document_id bigint, score double precision, chunk_id bigint, char_start integer,
               char_end integer)
LANGUAGE sql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan
AS $$
    SELECT DISTINCT ON (x.document_id)
           x.document_id, medpg.similarity_score(x.distance, x.similarity)::float8,
           x.id, x.char_start, x.char_end
    FROM (
        SELECT c.document_id, c.id, c.char_start, c.char_end, e.similarity,
               medpg.vector_distance(c.embedding, query_embedding, e.similarity) AS distance
        FROM medpg.embedding_space e
        JOIN medpg.chunks c ON c.embedding_model = e.model
        WHERE c.document_id = ANY (document_ids)
          AND c.embedding IS NOT NULL
        OFFSET 0
    ) x
    ORDER BY x.document_id, x.distance, x.id
$$;

-- Exact similarity of each given chunk embedded by the current model (others are left out).
CREATE OR REPLACE FUNCTION medpg.dense_chunk_scores(query_embedding vector, chunk_ids bigint[])
RETURNS TABLE (chunk_id bigint, score double precision)
LANGUAGE sql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan
AS $$
    SELECT c.id,
           medpg.similarity_score(medpg.vector_distance(c.embedding, query_embedding, e.similarity),
                                  e.similarity)::float8
    FROM medpg.embedding_space e
    JOIN medpg.chunks c ON c.embedding_model = e.model
    WHERE c.id = ANY (chunk_ids)
      AND c.embedding IS NOT NULL
$$;

-- The chunk_limit nearest chunks by the HNSW index (iterative scan), optionally only those of
-- documents passing the filters. One query per operator: the index can only serve a literal one.
-- With embedding_space.index_storage = 'halfvec' the index is over embedding::halfvec(D)
-- (medpg.embedding.index) and the scan must order by that same expression, whose dimension is a
-- literal: that query is made here from the space's dimension (one more parse and plan per call;
-- the definitions stay the same for every space). Distances returned are the
-- full-precision ones, whichever index found the chunks. enable_seqscan is off for the call: these
-- queries exist to be served by the index, which the planner's costs for a small table (or for
-- the halfvec expression) would otherwise pass over for a full sort.
-- The filter is a scalar subquery on the candidate's document (one primary-key lookup per chunk
-- the index scan returns), not EXISTS: PostgreSQL 18 turns such an EXISTS into a hashed subplan,
-- and since it costs the index scan as if it returned every chunk, it chose to hash every
-- matching document first, a sequential scan of medpg.documents per call (at 1M documents a source
-- filter took 390 ms p50 that way, 27 ms with the lookup: benchmarks/results/scale.md).
CREATE OR REPLACE FUNCTION medpg.dense_chunk_candidates(
    query_embedding vector, chunk_limit integer, space_model text, similarity text,
    sources text[] DEFAULT NULL,
    metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL,
    date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL)
RETURNS TABLE (chunk_id bigint, document_id bigint, distance double precision, char_start integer,
               char_end integer)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    filtered boolean := medpg.has_filter(sources, metadata_contains, date_from, date_to, patient_ids);
    storage text;
    dim integer;
BEGIN
    SELECT e.index_storage, e.dimension INTO storage, dim FROM medpg.embedding_space e;
    IF storage = 'halfvec' THEN
        RETURN QUERY EXECUTE format(
            $q$
            SELECT c.id, c.document_id, (c.embedding %1$s $1)::float8, c.char_start, c.char_end
            FROM medpg.chunks c
            WHERE c.embedding_model = $3
              AND (NOT $4 OR (
                    SELECT medpg.document_matches(fd, $5, $6, $7, $8, $9)
                    FROM medpg.documents fd WHERE fd.id = c.document_id))
            ORDER BY (c.embedding::halfvec(%2$s)) %1$s ($1::halfvec(%2$s))
            LIMIT $2
            $q$,
            CASE WHEN similarity = 'cosine' THEN '<=>' ELSE '<#>' END, dim)
        USING query_embedding, chunk_limit, space_model, filtered,
              sources, metadata_contains, date_from, date_to, patient_ids;
    ELSIF similarity = 'cosine' THEN
        RETURN QUERY
        SELECT c.id, c.document_id, (c.embedding <=> query_embedding)::float8, c.char_start, c.char_end
        FROM medpg.chunks c
        WHERE c.embedding_model = space_model
          AND (NOT filtered OR (
                SELECT medpg.document_matches(fd, sources, metadata_contains, date_from, date_to, patient_ids)
                FROM medpg.documents fd WHERE fd.id = c.document_id))
        ORDER BY c.embedding <=> query_embedding
        LIMIT chunk_limit;
    ELSE
        RETURN QUERY
        SELECT c.id, c.document_id, (c.embedding <#> query_embedding)::float8, c.char_start, c.char_end
        FROM medpg.chunks c
        WHERE c.embedding_model = space_model
          AND (NOT filtered OR (
                SELECT medpg.document_matches(fd, sources, metadata_contains, date_from, date_to, patient_ids)
                FROM medpg.documents fd WHERE fd.id = c.document_id))
        ORDER BY c.embedding <#> query_embedding
        LIMIT chunk_limit;
    END IF;
END
$$;

-- The most chunks a patient selection may hold for medpg.dense_search to scan them exactly
-- without the HNSW index: the medpg.dense_exact_chunks setting (SET it per session or role),
-- 5000 by default. An exact top 10 over k 768-d vectors found by a btree took 1.7 ms for k = 100,
-- 9 ms for 1,000 and 37 ms for 5,000 on a loaded 2-core machine (benchmarks/results/
-- hnsw_params.md); a filtered HNSW scan of so small a selection passes over up to
-- hnsw.max_scan_tuples other rows and then falls back to that same exact scan.
CREATE OR REPLACE FUNCTION medpg.dense_exact_chunks() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(nullif(current_setting('medpg.dense_exact_chunks', true), '')::integer, 5000) $$;

-- hnsw.ef_search for one call: 1..1000 (pgvector's own range).
CREATE OR REPLACE FUNCTION medpg.check_ef_search(fn text, arg text, value integer)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT medpg.check_range(fn, arg, value, 1, 1000) $$;

-- Top-n documents by their best chunk. Fetches 2.5n chunks first and widens, by the chunks per
-- document just seen, until they cover n documents (several chunks of one document can fill the
-- list). With a filter (or row-level security), if the index scan gave up early
-- (hnsw.max_scan_tuples: a selective filter), an exact scan of the matching documents' chunks is
-- cheap and complete. ``also`` as in bm25_search.
-- Per-patient plan: when patient_ids is given, or row-level security binds the caller to some
-- patients (medpg.patient_scoped), and those patients' documents hold at most
-- medpg.dense_exact_chunks() chunks, the HNSW index is skipped: their chunks are read through the
-- patient btree (documents_patient_idx, then chunks by document) and scored exactly, so one
-- patient's search is fast and its answer is the exact one. Ties are broken alike on every path:
-- chunks by (distance, chunk id), documents by (distance of their best chunk, document id).
-- n (1..10000) and ef_search (1..1000) are checked first: SQLSTATE 22023.
CREATE OR REPLACE FUNCTION medpg.dense_search(
    query_embedding vector, n integer DEFAULT 100, ef_search integer DEFAULT 200,
    also bigint[] DEFAULT NULL,
    sources text[] DEFAULT NULL,
    metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL,
    date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL)
RETURNS TABLE (document_id bigint, rank integer, score double precision, chunk_id bigint,
               char_start integer, char_end integer)
LANGUAGE plpgsql STABLE
-- The SET clauses make these settings local to the call: set_config below changes ef_search for
-- this call only. Iterative scans keep a filtered search going until it has enough rows
-- (pgvector >= 0.8); relaxed order is re-sorted below.
SET hnsw.ef_search = 200
SET hnsw.iterative_scan = 'relaxed_order'
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    -- Row-level security filters too: for a role that sees one patient's documents the index scan
    -- finds few of them, and the exact scan below is the complete answer.
    filtered boolean := medpg.has_filter(sources, metadata_contains, date_from, date_to, patient_ids)
                        OR row_security_active('medpg.chunks'::regclass);
    space medpg.embedding_space;
    -- The patients the search is confined to (the filter's, else the caller's scope): their
    -- documents are found through the patient btree.
    patients text[] := patient_ids;
    exact boolean := false;
    exact_limit integer;
    selected integer;
    chunk_limit integer;
    ids bigint[];
    docs bigint[];
    dists double precision[];
    starts integer[];
    ends integer[];
    got integer;
    distinct_docs integer := 0;
BEGIN
    IF query_embedding IS NULL THEN
        RAISE EXCEPTION 'medpg.dense_search: query_embedding is NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM medpg.checked_count('medpg.dense_search', 'n', n),
            medpg.check_ef_search('medpg.dense_search', 'ef_search', ef_search);
    chunk_limit := ceil(n * 2.5)::integer;
    PERFORM set_config('hnsw.ef_search', ef_search::text, true);
    SELECT * INTO space FROM medpg.embedding_space;
    IF patients IS NULL AND medpg.patient_scoped() THEN
        patients := medpg.scope_patients();
    END IF;
    IF patients IS NOT NULL THEN
        exact_limit := medpg.dense_exact_chunks();
        SELECT count(*) INTO selected FROM (
            SELECT 1 FROM medpg.documents fd JOIN medpg.chunks c ON c.document_id = fd.id
            WHERE fd.patient_id = ANY (patients)
            LIMIT exact_limit + 1
        ) s;
        exact := selected <= exact_limit;
    END IF;
    IF NOT exact THEN
        LOOP
            SELECT array_agg(x.chunk_id ORDER BY x.distance, x.chunk_id),
                   array_agg(x.document_id ORDER BY x.distance, x.chunk_id),
                   array_agg(x.distance ORDER BY x.distance, x.chunk_id),
                   array_agg(x.char_start ORDER BY x.distance, x.chunk_id),
                   array_agg(x.char_end ORDER BY x.distance, x.chunk_id)
              INTO ids, docs, dists, starts, ends
            FROM medpg.dense_chunk_candidates(query_embedding, chunk_limit, space.model, space.similarity,
                                              sources, metadata_contains, date_from, date_to, patient_ids) x;
            got := coalesce(cardinality(ids), 0);
            SELECT count(DISTINCT d) INTO distinct_docs FROM unnest(docs) d;
            EXIT WHEN got < chunk_limit OR distinct_docs >= n OR chunk_limit >= 64 * greatest(n, 1);
            chunk_limit := least(64 * greatest(n, 1), greatest(
                chunk_limit + n,
                ceil(chunk_limit::numeric * n / greatest(distinct_docs, 1) * 1.25)::integer));
        END LOOP;
    END IF;
    IF exact OR (filtered AND distinct_docs < n) THEN
        -- Two statements rather than one with (patients IS NULL OR fd.patient_id = ANY (patients)):
        -- under the generic plan (plan_cache_mode above) an OR'd predicate cannot use the patient
        -- btree, and the per-patient path is the one an EHR integration takes most.
        IF patients IS NOT NULL THEN
            -- Every chunk of the selection when it is small (exact), else the nearest 64n.
            SELECT array_agg(x.id ORDER BY x.distance, x.id), array_agg(x.document_id ORDER BY x.distance, x.id),
                   array_agg(x.distance ORDER BY x.distance, x.id), array_agg(x.char_start ORDER BY x.distance, x.id),
                   array_agg(x.char_end ORDER BY x.distance, x.id)
              INTO ids, docs, dists, starts, ends
            FROM (
                SELECT c.id, c.document_id,
                       medpg.vector_distance(c.embedding, query_embedding, space.similarity)::float8 AS distance,
                       c.char_start, c.char_end
                FROM medpg.documents fd
                JOIN medpg.chunks c ON c.document_id = fd.id
                WHERE fd.patient_id = ANY (patients)
                  AND medpg.document_matches(fd, sources, metadata_contains, date_from, date_to, patient_ids)
                  AND c.embedding_model = space.model AND c.embedding IS NOT NULL
                ORDER BY 3, 1
                LIMIT CASE WHEN exact THEN NULL ELSE 64 * greatest(n, 1) END
            ) x;
        ELSE
            SELECT array_agg(x.id ORDER BY x.distance, x.id), array_agg(x.document_id ORDER BY x.distance, x.id),
                   array_agg(x.distance ORDER BY x.distance, x.id), array_agg(x.char_start ORDER BY x.distance, x.id),
                   array_agg(x.char_end ORDER BY x.distance, x.id)
              INTO ids, docs, dists, starts, ends
            FROM (
                SELECT c.id, c.document_id,
                       medpg.vector_distance(c.embedding, query_embedding, space.similarity)::float8 AS distance,
                       c.char_start, c.char_end
                FROM medpg.documents fd
                JOIN medpg.chunks c ON c.document_id = fd.id
                WHERE medpg.document_matches(fd, sources, metadata_contains, date_from, date_to, patient_ids)
                  AND c.embedding_model = space.model AND c.embedding IS NOT NULL
                ORDER BY 3, 1
                LIMIT 64 * greatest(n, 1)
            ) x;
        END IF;
    END IF;
    RETURN QUERY
    WITH best AS (
        SELECT DISTINCT ON (x.doc) x.doc, x.chunk, x.dist, x.cs, x.ce
        FROM unnest(docs, ids, dists, starts, ends) AS x(doc, chunk, dist, cs, ce)
        ORDER BY x.doc, x.dist, x.chunk
    ),
    top AS (
        SELECT best.* FROM best ORDER BY best.dist, best.doc LIMIT greatest(n, 0)
    )
    SELECT top.doc, (row_number() OVER (ORDER BY top.dist, top.doc))::integer,
           medpg.similarity_score(top.dist, space.similarity)::float8, top.chunk, top.cs, top.ce
    FROM top
    UNION ALL
    SELECT s.document_id, NULL::integer, s.score, s.chunk_id, s.char_start, s.char_end
    FROM medpg.dense_document_scores(query_embedding,
             ARRAY(SELECT a FROM unnest(also) a EXCEPT SELECT top.doc FROM top)) s;
END
$$;

-- Rocchio feedback on the query vector (medpg.hybrid_search's 'rocchio' feedback): the query moved
-- toward the mean of the given chunks' vectors, each taken at unit length,
--   q' = |q| * normalize(q / |q| + weight * mean(c / |c|)),
-- so the moved vector keeps the query's length (inner-product scores stay on the query's scale;
-- cosine ignores length). Only chunks embedded by the current model count. With no such chunk,
-- weight 0, a zero query or a zero sum, the query comes back unchanged.
CREATE OR REPLACE FUNCTION medpg.feedback_vector(
    query_embedding vector, chunk_ids bigint[], weight double precision)
RETURNS vector
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH fb AS (
        SELECT avg(l2_normalize(c.embedding)) AS mean, count(*) AS n
        FROM medpg.embedding_space e
        JOIN medpg.chunks c ON c.embedding_model = e.model
        WHERE c.id = ANY (chunk_ids) AND c.embedding IS NOT NULL
    ),
    moved AS (
        SELECT l2_normalize(query_embedding)
               + fb.mean * array_fill(weight::real, ARRAY[vector_dims(query_embedding)])::vector AS v
        FROM fb
        WHERE fb.n > 0 AND weight > 0 AND vector_norm(query_embedding) > 0
    )
    SELECT coalesce(
        (SELECT l2_normalize(moved.v)
                * array_fill(vector_norm(query_embedding)::real, ARRAY[vector_dims(query_embedding)])::vector
         FROM moved WHERE vector_norm(moved.v) > 0),
        query_embedding)
$$;
