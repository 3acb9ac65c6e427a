-- The active query adaptation (medpg learn) and the one function that applies it.
--
-- A query adaptation maps the query encoder's output q to q' = (q + W q) * |q| / |q + W q|
-- (for a normalized encoder: normalize(q + W q)). W was trained against the document vectors
-- stored in medpg.chunks, so they are never re-embedded; medpg.query_adaptations keeps one row per
-- version (revision 0009). medpg.search() applies the same arithmetic in Python
-- (medpg/learning/adapter.py); a test checks that both agree to 1e-5.
--
-- Which adaptation applies: the active one of the caller's tenant (medpg.scope_tenant(): the API
-- key's tenant, or a SQL application role's), else the active one for every tenant (tenant_id
-- NULL), and only if it was trained on the vectors search uses now (embedding_space.model): after
-- a model switch an old adaptation no longer applies. The table owner (the CLI) has no tenant and
-- gets the one for every tenant. Row-level security (100_access.sql) shows a role only these rows.

CREATE OR REPLACE FUNCTION medpg.active_query_adaptation()
RETURNS TABLE (id bigint, created_at timestamptz, tenant_id text, kind text, query_model text,
               article_model text, dimension integer, dense_weight double precision,
               lexical_weight double precision, activated_at timestamptz)
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
    SELECT a.id, a.created_at, a.tenant_id, a.kind, a.query_model, a.article_model, a.dimension, a.dense_weight,
           a.lexical_weight, a.activated_at
    FROM medpg.query_adaptations a
    WHERE a.active
      AND (a.tenant_id IS NULL OR a.tenant_id = (SELECT medpg.scope_tenant()))
      AND a.article_model = (SELECT s.model FROM medpg.embedding_space s)
    ORDER BY a.tenant_id NULLS LAST
    LIMIT 1
$$;

COMMENT ON FUNCTION medpg.active_query_adaptation() IS
    'The query adaptation that applies to the caller (its tenant''s, else the one for every tenant), '
    'with its fusion weights; no row: none applies';

-- v adapted by the active adaptation; v itself when none applies, or when query_model is given and
-- the active adaptation was trained for another query encoder. (W v)_i is pgvector's inner product
-- of row i of W with v: a 384-d adaptation costs about a millisecond.
CREATE OR REPLACE FUNCTION medpg.adapt_query_embedding(v vector, query_model text DEFAULT NULL)
RETURNS vector
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    a record;
    wv real[];
    x vector;
BEGIN
    IF v IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT q.id, q.dimension, q.query_model AS trained_for, q.weight INTO a
    FROM medpg.active_query_adaptation() s JOIN medpg.query_adaptations q ON q.id = s.id;
    IF NOT FOUND OR (query_model IS NOT NULL AND a.trained_for <> query_model) THEN
        RETURN v;
    END IF;
    IF vector_dims(v) <> a.dimension THEN
        RAISE EXCEPTION 'medpg.adapt_query_embedding: v has % dimensions but the active query adaptation % has %',
            vector_dims(v), a.id, a.dimension USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(-(r.w <#> v) ORDER BY r.i) INTO wv FROM unnest(a.weight) WITH ORDINALITY AS r(w, i);
    x := v + wv::vector;
    IF vector_norm(x) = 0 OR vector_norm(v) = 0 THEN
        RETURN v;
    END IF;
    RETURN (SELECT array_agg(e * (vector_norm(v) / vector_norm(x)) ORDER BY n)
            FROM unnest(x::real[]) WITH ORDINALITY AS u(e, n))::vector;
END
$$;

COMMENT ON FUNCTION medpg.adapt_query_embedding(vector, text) IS
    'A raw query embedding adapted by the active query adaptation (medpg learn), as medpg.search() does; '
    'identity when none applies';
