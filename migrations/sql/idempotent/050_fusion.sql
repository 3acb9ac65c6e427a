-- Fusion of a dense and a lexical candidate list. The same arithmetic is kept as pure Python
-- functions (medpg/retrieval/fusion.py) with unit tests, and a test checks the two agree.
--
-- rrf:      w_d / (k + rank_d) + w_l / (k + rank_l), a missing rank adding 0.
-- weighted: w_d * minmax(score_d) + w_l * minmax(score_l), min and max taken over the documents
--           the list ranked; a missing score adds 0.
-- adaptive: weighted, with the lexical weight scaled per query by lexical_coverage (0..1,
--           medpg.lexical_coverage: the share of the query's idf mass that occurs in the corpus):
--           w_d * minmax(score_d) + w_l * coverage * minmax(score_l).

-- A score normalized by its list's range: a document outside the list can fall below 0.
CREATE OR REPLACE FUNCTION medpg.minmax(score double precision, lo double precision, hi double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN score IS NULL OR lo IS NULL OR hi IS NULL THEN NULL
                WHEN hi > lo THEN (score - lo) / (hi - lo)
                WHEN score >= hi THEN 1.0
                ELSE 0.0 END
$$;

-- Revision 0008 and before defined medpg.fuse without lexical_coverage: drop that signature, or
-- calls with nine arguments would be ambiguous.
DROP FUNCTION IF EXISTS medpg.fuse(bigint[], integer[], double precision[], integer[], double precision[],
                                   text, integer, double precision, double precision);

CREATE OR REPLACE FUNCTION medpg.fuse(
    document_ids bigint[], dense_ranks integer[], dense_scores double precision[],
    lexical_ranks integer[], lexical_scores double precision[],
    method text DEFAULT 'adaptive', rrf_k integer DEFAULT 60,
    dense_weight double precision DEFAULT 0.5, lexical_weight double precision DEFAULT 0.5,
    lexical_coverage double precision DEFAULT 1.0)
RETURNS TABLE (document_id bigint, fused_score double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
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
                WHEN method = 'adaptive' THEN
                    dense_weight * coalesce(medpg.minmax(c.ds, m.dlo, m.dhi), 0)
                    + lexical_weight * coalesce(lexical_coverage, 1)
                      * coalesce(medpg.minmax(c.ls, m.llo, m.lhi), 0)
                ELSE
                    dense_weight * coalesce(medpg.minmax(c.ds, m.dlo, m.dhi), 0)
                    + lexical_weight * coalesce(medpg.minmax(c.ls, m.llo, m.lhi), 0)
           END::float8
    FROM c CROSS JOIN m
    WHERE c.document_id IS NOT NULL
$$;
