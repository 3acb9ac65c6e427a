"""Search functions: dense, lexical (BM25 and ts_rank), fusion and hybrid, all in the medpg schema.

These are the one implementation of retrieval and fusion: ``medpg.search`` in Python and any
SQL-backed application call the same functions.

- ``medpg.query_lexemes(text)``: the query's lexemes ('english' configuration); any string is safe.
- ``medpg.or_tsquery(text)``: those lexemes OR-ed into a tsquery (quotes and backslashes escaped),
  NULL when there is none (an all-stopword query matches nothing, without an error).
- ``medpg.bm25_scores(text, k1, b, title_weight)``: BM25 of every document matching any query
  lexeme, from ``medpg.lexical_postings`` and ``medpg.lexical_stats`` (document frequencies are
  counted from the postings read anyway).
- ``medpg.bm25_search`` / ``medpg.ts_rank_search`` / ``medpg.dense_search``: top-N documents of one
  retriever with filters; ``also`` asks for the scores of extra documents (full-information fusion:
  a candidate found by one retriever gets its real score from the other).
- ``medpg.dense_document_scores``: exact similarity of given documents (best current chunk).
- ``medpg.fuse``: reciprocal rank fusion or a weighted sum of min-max-normalized scores.
- ``medpg.hybrid_search``: all of the above in one call, with explanations per document.

Functions that plan a query carry ``SET plan_cache_mode = force_generic_plan``: they are then not
inlined into the caller and their plan is made once per session instead of on every call.

Revision ID: 0005
"""

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Filters shared by every path. Dates are a half-open range: date_from <= document_date < date_to.
FILTER_ARGS = """
    sources text[] DEFAULT NULL,
    metadata_contains jsonb DEFAULT NULL,
    date_from timestamptz DEFAULT NULL,
    date_to timestamptz DEFAULT NULL,
    patient_ids text[] DEFAULT NULL"""
FILTER_PASS = (
    "sources => sources, metadata_contains => metadata_contains, date_from => date_from, "
    "date_to => date_to, patient_ids => patient_ids"
)
HAS_FILTER = (
    "(sources IS NOT NULL OR metadata_contains IS NOT NULL OR date_from IS NOT NULL "
    "OR date_to IS NOT NULL OR patient_ids IS NOT NULL)"
)


def _filter(d: str) -> str:
    """The filter predicate on documents aliased ``d``."""
    return f"""(sources IS NULL OR {d}.source = ANY (sources))
        AND (metadata_contains IS NULL OR {d}.metadata @> metadata_contains)
        AND (date_from IS NULL OR {d}.document_date >= date_from)
        AND (date_to IS NULL OR {d}.document_date < date_to)
        AND (patient_ids IS NULL OR {d}.patient_id = ANY (patient_ids))"""


def _allowed(doc_id: str) -> str:
    """True when no filter is set (no lookup at all) or the document passes the filters."""
    return (
        f"(NOT {HAS_FILTER} OR EXISTS (SELECT 1 FROM medpg.documents fd "
        f"WHERE fd.id = {doc_id} AND {_filter('fd')}))"
    )


FUNCTIONS = [
    "hybrid_search",
    "fuse",
    "minmax",
    "dense_search",
    "dense_document_scores",
    "ts_rank_search",
    "bm25_search",
    "bm25_scores",
    "or_tsquery",
    "query_lexemes",
]

# The lexemes of the query that a document contains (the last column of hybrid_search).
MATCHED_LEXEMES = """ARRAY(SELECT p.lexeme::text FROM medpg.lexical_postings p
                         WHERE p.lexeme = ANY (lexemes::text[] COLLATE "C") AND p.document_id = top.doc
                         ORDER BY p.lexeme)"""


def hybrid_search_sql(matched_lexemes: str = MATCHED_LEXEMES, create: str = "CREATE") -> str:
    """The hybrid_search definition; later revisions replace it with another ``matched_lexemes``."""
    return f"""
        {create} FUNCTION medpg.hybrid_search(
            query_text text,
            query_embedding vector DEFAULT NULL,
            k integer DEFAULT 10,
            mode text DEFAULT 'hybrid',
            candidates integer DEFAULT 100,
            lexical text DEFAULT 'bm25',
            fusion text DEFAULT 'weighted',
            rrf_k integer DEFAULT 60,
            dense_weight double precision DEFAULT 0.5,
            lexical_weight double precision DEFAULT 0.5,
            k1 double precision DEFAULT 2.0,
            b double precision DEFAULT 0.5,
            title_weight double precision DEFAULT 2.0,
            ts_rank_cover_density boolean DEFAULT false,
            ts_rank_normalization integer DEFAULT 0,
            ef_search integer DEFAULT 100,{FILTER_ARGS})
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
            d_ids bigint[] := '{{}}';
            d_ranks integer[] := '{{}}';
            d_scores double precision[] := '{{}}';
            d_chunks bigint[] := '{{}}';
            d_starts integer[] := '{{}}';
            d_ends integer[] := '{{}}';
            l_ids bigint[] := '{{}}';
            l_ranks integer[] := '{{}}';
            l_scores double precision[] := '{{}}';
            x_ids bigint[];
            lexemes text[] := medpg.query_lexemes(query_text);
        BEGIN
            IF mode IS NULL OR mode NOT IN ('hybrid', 'dense', 'lexical') THEN
                RAISE EXCEPTION 'medpg.hybrid_search: mode must be hybrid, dense or lexical, got %', mode
                    USING ERRCODE = '22023';
            END IF;
            IF lexical IS NULL OR lexical NOT IN ('bm25', 'ts_rank') THEN
                RAISE EXCEPTION 'medpg.hybrid_search: lexical must be bm25 or ts_rank, got %', lexical
                    USING ERRCODE = '22023';
            END IF;
            IF fusion IS NULL OR fusion NOT IN ('rrf', 'weighted') THEN
                RAISE EXCEPTION 'medpg.hybrid_search: fusion must be rrf or weighted, got %', fusion
                    USING ERRCODE = '22023';
            END IF;
            IF k IS NULL OR k < 1 OR candidates IS NULL OR candidates < 1 THEN
                RAISE EXCEPTION 'medpg.hybrid_search: k and candidates must be at least 1' USING ERRCODE = '22023';
            END IF;
            IF use_dense AND query_embedding IS NULL THEN
                RAISE EXCEPTION 'medpg.hybrid_search: mode % needs query_embedding', mode USING ERRCODE = '22004';
            END IF;

            IF use_dense THEN
                SELECT coalesce(array_agg(s.document_id ORDER BY s.rank), '{{}}'),
                       coalesce(array_agg(s.rank ORDER BY s.rank), '{{}}'),
                       coalesce(array_agg(s.score ORDER BY s.rank), '{{}}'),
                       coalesce(array_agg(s.chunk_id ORDER BY s.rank), '{{}}'),
                       coalesce(array_agg(s.char_start ORDER BY s.rank), '{{}}'),
                       coalesce(array_agg(s.char_end ORDER BY s.rank), '{{}}')
                  INTO d_ids, d_ranks, d_scores, d_chunks, d_starts, d_ends
                FROM medpg.dense_search(query_embedding, candidates, ef_search, NULL, {FILTER_PASS}) s;
            END IF;

            IF use_lexical THEN
                -- In hybrid mode the dense candidates get their lexical score too (full-information fusion).
                x_ids := CASE WHEN use_dense THEN d_ids END;
                IF lexical = 'bm25' THEN
                    SELECT coalesce(array_agg(s.document_id ORDER BY s.rank NULLS LAST, s.document_id), '{{}}'),
                           coalesce(array_agg(s.rank ORDER BY s.rank NULLS LAST, s.document_id), '{{}}'),
                           coalesce(array_agg(s.score ORDER BY s.rank NULLS LAST, s.document_id), '{{}}')
                      INTO l_ids, l_ranks, l_scores
                    FROM medpg.bm25_search(query_text, candidates, k1, b, title_weight, x_ids, {FILTER_PASS}) s;
                ELSE
                    SELECT coalesce(array_agg(s.document_id ORDER BY s.rank NULLS LAST, s.document_id), '{{}}'),
                           coalesce(array_agg(s.rank ORDER BY s.rank NULLS LAST, s.document_id), '{{}}'),
                           coalesce(array_agg(s.score ORDER BY s.rank NULLS LAST, s.document_id), '{{}}')
                      INTO l_ids, l_ranks, l_scores
                    FROM medpg.ts_rank_search(query_text, candidates, ts_rank_cover_density, ts_rank_normalization,
                                              x_ids, {FILTER_PASS}) s;
                END IF;
            END IF;

            IF use_dense AND use_lexical THEN
                -- Lexical candidates the dense list missed: their exact similarity and best chunk.
                SELECT d_ids || coalesce(array_agg(s.document_id), '{{}}'),
                       d_ranks || coalesce(array_agg(NULL::integer), '{{}}'),
                       d_scores || coalesce(array_agg(s.score), '{{}}'),
                       d_chunks || coalesce(array_agg(s.chunk_id), '{{}}'),
                       d_starts || coalesce(array_agg(s.char_start), '{{}}'),
                       d_ends || coalesce(array_agg(s.char_end), '{{}}')
                  INTO d_ids, d_ranks, d_scores, d_chunks, d_starts, d_ends
                FROM medpg.dense_document_scores(
                         query_embedding,
                         ARRAY(SELECT u FROM unnest(l_ids) u EXCEPT SELECT u FROM unnest(d_ids) u)) s;
            END IF;

            RETURN QUERY
            WITH dn AS (
                SELECT * FROM unnest(d_ids, d_ranks, d_scores, d_chunks, d_starts, d_ends)
                    AS x(doc, dr, ds, chunk, cs, ce)
            ),
            lx AS (
                SELECT * FROM unnest(l_ids, l_ranks, l_scores) AS x(doc, lr, ls)
            ),
            u AS (
                SELECT coalesce(dn.doc, lx.doc) AS doc, dn.dr, dn.ds, lx.lr, lx.ls, dn.chunk, dn.cs, dn.ce
                FROM dn FULL JOIN lx ON lx.doc = dn.doc
                -- Only documents some list ranked; the others are there for their scores only.
                WHERE dn.dr IS NOT NULL OR lx.lr IS NOT NULL
            ),
            arr AS (
                SELECT array_agg(u.doc ORDER BY u.doc) AS a_doc, array_agg(u.dr ORDER BY u.doc) AS a_dr,
                       array_agg(u.ds ORDER BY u.doc) AS a_ds, array_agg(u.lr ORDER BY u.doc) AS a_lr,
                       array_agg(u.ls ORDER BY u.doc) AS a_ls
                FROM u
            ),
            fz AS (
                SELECT x.document_id, x.fused_score
                FROM arr CROSS JOIN LATERAL medpg.fuse(arr.a_doc, arr.a_dr, arr.a_ds, arr.a_lr, arr.a_ls,
                                                       fusion, rrf_k, dense_weight, lexical_weight) x
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
                   {matched_lexemes}
            FROM top LEFT JOIN lexical_evidence le ON le.document_id = top.doc
            ORDER BY 2;
        END
        $$
        """


def upgrade() -> None:
    similarity = context.config.attributes["embedding_space"]["similarity"]
    # The operator must be the HNSW index's (0002 builds it for the configured similarity);
    # score: higher is better (cosine similarity, or the inner product).
    if similarity == "cosine":
        op_, score = "<=>", "1 - ({dist})"
    else:
        op_, score = "<#>", "-({dist})"

    op.execute(
        """
        CREATE FUNCTION medpg.query_lexemes(query_text text) RETURNS text[]
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$ SELECT tsvector_to_array(to_tsvector('english'::regconfig, coalesce(query_text, ''))) $$
        """
    )
    op.execute(
        r"""
        CREATE FUNCTION medpg.or_tsquery(query_text text) RETURNS tsquery
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$
            -- Lexemes are quoted, so & | ! : * ( ) < > inside them are plain characters.
            SELECT nullif(
                array_to_string(ARRAY(
                    SELECT '''' || replace(replace(l, '\', '\\'), '''', '''''') || ''''
                    FROM unnest(medpg.query_lexemes(query_text)) l
                ), ' | '),
                '')::tsquery
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION medpg.bm25_scores(
            query_text text, k1 double precision DEFAULT 2.0, b double precision DEFAULT 0.5,
            title_weight double precision DEFAULT 2.0)
        RETURNS TABLE (document_id bigint, score double precision)
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$
            WITH q AS (
                SELECT u.lexeme COLLATE "C" AS lexeme, cardinality(u.positions) AS qtf
                FROM unnest(to_tsvector('english'::regconfig, coalesce(query_text, ''))) u
            ),
            stats AS (
                SELECT greatest(coalesce(sum(s.documents), 0), 1)::float8 AS n,
                       greatest(
                           (coalesce(sum(s.length), 0) + (title_weight - 1) * coalesce(sum(s.title_length), 0))
                           / greatest(coalesce(sum(s.documents), 0), 1), 1e-9)::float8 AS avgdl
                FROM medpg.lexical_stats s
            ),
            p AS MATERIALIZED (
                SELECT q.lexeme, q.qtf, p.document_id,
                       p.tf + (title_weight - 1) * p.tf_title AS tf,
                       p.dl + (title_weight - 1) * p.dl_title AS dl
                FROM q JOIN medpg.lexical_postings p ON p.lexeme = q.lexeme
            ),
            idf AS (
                -- Lucene's idf, always positive; df counted from the postings just read.
                SELECT p.lexeme, ln(1 + (greatest(stats.n - count(*), 0) + 0.5) / (count(*) + 0.5)) AS idf
                FROM p CROSS JOIN stats
                GROUP BY p.lexeme, stats.n
            )
            SELECT p.document_id,
                   sum(p.qtf * idf.idf * p.tf * (k1 + 1)
                       / (p.tf + k1 * (1 - b + b * p.dl / stats.avgdl)))::float8
            FROM p JOIN idf ON idf.lexeme = p.lexeme CROSS JOIN stats
            GROUP BY p.document_id
        $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION medpg.bm25_search(
            query_text text, n integer DEFAULT 100, k1 double precision DEFAULT 2.0,
            b double precision DEFAULT 0.5, title_weight double precision DEFAULT 2.0,
            also bigint[] DEFAULT NULL,{FILTER_ARGS})
        RETURNS TABLE (document_id bigint, rank integer, score double precision)
        LANGUAGE sql STABLE PARALLEL SAFE
        SET plan_cache_mode = force_generic_plan
        AS $$
            WITH s AS MATERIALIZED (SELECT * FROM medpg.bm25_scores(query_text, k1, b, title_weight)),
            top AS (
                SELECT s.document_id, s.score FROM s
                WHERE {_allowed("s.document_id")}
                ORDER BY s.score DESC, s.document_id
                LIMIT greatest(n, 0)
            ),
            ranked AS (
                SELECT top.document_id, (row_number() OVER (ORDER BY top.score DESC, top.document_id))::integer AS rank,
                       top.score
                FROM top
            )
            SELECT * FROM ranked
            UNION ALL
            -- Documents asked for by the caller that are not in the top: their score (0 when no term matches).
            SELECT a.id, NULL::integer, coalesce(s.score, 0)
            FROM unnest(also) AS a(id)
            LEFT JOIN s ON s.document_id = a.id
            WHERE NOT EXISTS (SELECT 1 FROM ranked r WHERE r.document_id = a.id)
        $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION medpg.ts_rank_search(
            query_text text, n integer DEFAULT 100, cover_density boolean DEFAULT false,
            normalization integer DEFAULT 0, also bigint[] DEFAULT NULL,{FILTER_ARGS})
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
                WHERE {_filter("d")}
                ORDER BY 2 DESC, 1
                LIMIT greatest(n, 0)
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
        $$
        """
    )
    dist = f"c.embedding {op_} query_embedding"
    op.execute(
        f"""
        CREATE FUNCTION medpg.dense_document_scores(query_embedding vector, document_ids bigint[])
        RETURNS TABLE (document_id bigint, score double precision, chunk_id bigint, char_start integer,
                       char_end integer)
        LANGUAGE sql STABLE PARALLEL SAFE
        SET plan_cache_mode = force_generic_plan
        AS $$
            -- Exact similarity of each document's best chunk embedded by the current model.
            SELECT DISTINCT ON (c.document_id)
                   c.document_id, ({score.format(dist=dist)})::float8, c.id, c.char_start, c.char_end
            FROM medpg.chunks c
            WHERE c.document_id = ANY (document_ids)
              AND c.embedding IS NOT NULL
              AND c.embedding_model = (SELECT e.model FROM medpg.embedding_space e)
            ORDER BY c.document_id, {dist}, c.id
        $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION medpg.dense_search(
            query_embedding vector, n integer DEFAULT 100, ef_search integer DEFAULT 100,
            also bigint[] DEFAULT NULL,{FILTER_ARGS})
        RETURNS TABLE (document_id bigint, rank integer, score double precision, chunk_id bigint,
                       char_start integer, char_end integer)
        LANGUAGE plpgsql STABLE
        -- The SET clauses make these settings local to the call: set_config below changes
        -- ef_search for this call only. Iterative scans keep a filtered search going until it
        -- has enough rows (pgvector >= 0.8); relaxed order is re-sorted below.
        SET hnsw.ef_search = 100
        SET hnsw.iterative_scan = 'relaxed_order'
        SET plan_cache_mode = force_generic_plan
        AS $$
        DECLARE
            filtered boolean := {HAS_FILTER};
            space_model text;
            chunk_limit integer := ceil(greatest(n, 1) * 2.5)::integer;
            ids bigint[];
            docs bigint[];
            dists double precision[];
            starts integer[];
            ends integer[];
            got integer;
            distinct_docs integer;
        BEGIN
            IF query_embedding IS NULL THEN
                RAISE EXCEPTION 'medpg.dense_search: query_embedding is NULL' USING ERRCODE = '22004';
            END IF;
            PERFORM set_config('hnsw.ef_search', least(greatest(ef_search, 1), 1000)::text, true);
            SELECT e.model INTO space_model FROM medpg.embedding_space e;
            LOOP
                SELECT array_agg(x.id ORDER BY x.dist, x.id), array_agg(x.document_id ORDER BY x.dist, x.id),
                       array_agg(x.dist ORDER BY x.dist, x.id), array_agg(x.char_start ORDER BY x.dist, x.id),
                       array_agg(x.char_end ORDER BY x.dist, x.id)
                  INTO ids, docs, dists, starts, ends
                FROM (
                    SELECT c.id, c.document_id, ({dist})::float8 AS dist, c.char_start, c.char_end
                    FROM medpg.chunks c
                    WHERE c.embedding_model = space_model
                      AND {_allowed("c.document_id")}
                    ORDER BY {dist}
                    LIMIT chunk_limit
                ) x;
                got := coalesce(cardinality(ids), 0);
                SELECT count(DISTINCT d) INTO distinct_docs FROM unnest(docs) d;
                -- Several chunks of one document can fill the list: widen, by the chunks-per-document
                -- ratio just seen, until the chunks cover n documents.
                EXIT WHEN got < chunk_limit OR distinct_docs >= n OR chunk_limit >= 64 * greatest(n, 1);
                chunk_limit := least(64 * greatest(n, 1), greatest(
                    chunk_limit + n,
                    ceil(chunk_limit::numeric * n / greatest(distinct_docs, 1) * 1.25)::integer));
            END LOOP;
            IF filtered AND distinct_docs < n THEN
                -- The index scan stopped early (hnsw.max_scan_tuples): a selective filter, so an
                -- exact scan of the matching documents is cheap and complete.
                SELECT array_agg(x.id ORDER BY x.dist, x.id), array_agg(x.document_id ORDER BY x.dist, x.id),
                       array_agg(x.dist ORDER BY x.dist, x.id), array_agg(x.char_start ORDER BY x.dist, x.id),
                       array_agg(x.char_end ORDER BY x.dist, x.id)
                  INTO ids, docs, dists, starts, ends
                FROM (
                    SELECT c.id, c.document_id, ({dist})::float8 AS dist, c.char_start, c.char_end
                    FROM medpg.documents fd
                    JOIN medpg.chunks c ON c.document_id = fd.id
                    WHERE {_filter("fd")}
                      AND c.embedding_model = space_model AND c.embedding IS NOT NULL
                    ORDER BY ({dist}) + 0
                    LIMIT 64 * greatest(n, 1)
                ) x;
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
                   ({score.format(dist="top.dist")})::float8, top.chunk, top.cs, top.ce
            FROM top
            UNION ALL
            SELECT s.document_id, NULL::integer, s.score, s.chunk_id, s.char_start, s.char_end
            FROM medpg.dense_document_scores(query_embedding,
                     ARRAY(SELECT a FROM unnest(also) a EXCEPT SELECT top.doc FROM top)) s;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION medpg.minmax(score double precision, lo double precision, hi double precision)
        RETURNS double precision
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$
            -- Normalized by the list's own range: a document outside the list can fall below 0.
            SELECT CASE WHEN score IS NULL OR lo IS NULL OR hi IS NULL THEN NULL
                        WHEN hi > lo THEN (score - lo) / (hi - lo)
                        WHEN score >= hi THEN 1.0
                        ELSE 0.0 END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION medpg.fuse(
            document_ids bigint[], dense_ranks integer[], dense_scores double precision[],
            lexical_ranks integer[], lexical_scores double precision[],
            method text DEFAULT 'weighted', rrf_k integer DEFAULT 60,
            dense_weight double precision DEFAULT 0.5, lexical_weight double precision DEFAULT 0.5)
        RETURNS TABLE (document_id bigint, fused_score double precision)
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$
            -- rrf:      w_d / (k + rank_d) + w_l / (k + rank_l), a missing rank adding 0.
            -- weighted: w_d * minmax(score_d) + w_l * minmax(score_l), min and max taken over the
            --           documents the list ranked; a missing score adds 0.
            WITH c AS (
                SELECT * FROM unnest(document_ids, dense_ranks, dense_scores, lexical_ranks, lexical_scores)
                    AS c(document_id, dr, ds, lr, ls)
            ),
            m AS (
                SELECT min(c.ds) FILTER (WHERE c.dr IS NOT NULL) AS dlo,
                       max(c.ds) FILTER (WHERE c.dr IS NOT NULL) AS dhi,
                       min(c.ls) FILTER (WHERE c.lr IS NOT NULL) AS llo,
                       max(c.ls) FILTER (WHERE c.lr IS NOT NULL) AS lhi
                FROM c
            )
            SELECT c.document_id,
                   CASE WHEN method = 'rrf' THEN
                            coalesce(dense_weight / (rrf_k + c.dr), 0) + coalesce(lexical_weight / (rrf_k + c.lr), 0)
                        ELSE
                            dense_weight * coalesce(medpg.minmax(c.ds, m.dlo, m.dhi), 0)
                            + lexical_weight * coalesce(medpg.minmax(c.ls, m.llo, m.lhi), 0)
                   END::float8
            FROM c CROSS JOIN m
            WHERE c.document_id IS NOT NULL
        $$
        """
    )
    op.execute(hybrid_search_sql())
    op.execute(
        "COMMENT ON FUNCTION medpg.hybrid_search IS 'Dense + lexical (bm25 or ts_rank) candidates, fused "
        "(weighted or rrf), with per-document ranks, scores, evidence chunk and matched lexemes'"
    )


def downgrade() -> None:
    for name in FUNCTIONS:  # dependants first
        op.execute(f"DROP FUNCTION IF EXISTS medpg.{name}")
