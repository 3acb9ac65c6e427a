-- Embedding state: which chunks have a current vector, and the work queue of those that do not.
-- PostgreSQL is the source of truth; a broker message only says "look at these chunks".
--
-- A chunk needs a vector of model M when
--   direct mode  (M is embedding_space.model, or no model has embedded yet): its vector is missing
--                or was made from other text: embedded_hash IS DISTINCT FROM content_hash (the
--                partial index chunks_pending_idx holds exactly these chunks). Vectors reach
--                chunks.embedding only from the embedding_space model, and a finished switch
--                rewrites all of them, so a current hash implies the current model.
--   staging mode (a switch to M is in progress): it has no staged vector of M for its current text.
--
-- States, in this order of precedence (medpg.chunk_state):
--   embedded   has a current vector of M
--   in_flight  leased by a live worker (claimed less than a lease ago)
--   failed     attempts used up; only `medpg embed --retry-failed` (medpg.reset_failed) retries it
--   retrying   the last attempt failed, attempts are left
--   pending    waiting to be claimed
--
-- The work functions (claim_chunks, mark_enqueued, count_claimable, reset_failed) decide the mode
-- once and are planned per call (force_custom_plan), so in direct mode the planner sees the literal
-- hash test and reads chunks_pending_idx instead of every chunk.

-- 'direct' or 'staging': where vectors of ``model`` go.
CREATE OR REPLACE FUNCTION medpg.embedding_mode(model text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN e.model IS NULL OR e.model = embedding_mode.model THEN 'direct' ELSE 'staging' END
    FROM medpg.embedding_space e
$$;

-- Direct mode: the chunk's vector is missing or was made from other text.
CREATE OR REPLACE FUNCTION medpg.chunk_vector_outdated(c medpg.chunks) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT c.embedded_hash IS DISTINCT FROM c.content_hash $$;

-- Staging mode: the chunk has no staged vector of ``model`` for its current text.
CREATE OR REPLACE FUNCTION medpg.chunk_staged_vector_missing(c medpg.chunks, model text) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM medpg.chunk_embeddings_staging s
        WHERE s.chunk_id = c.id AND s.model = chunk_staged_vector_missing.model
          AND s.embedded_hash = c.content_hash)
$$;

-- A worker holding ``token`` may lease the chunk: attempts are left and no live lease is another's.
CREATE OR REPLACE FUNCTION medpg.chunk_claimable(
    c medpg.chunks, token text, lease_seconds integer, max_attempts integer) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT c.attempts < max_attempts
       AND (c.claimed_at IS NULL OR c.claimed_at < now() - make_interval(secs => lease_seconds)
            OR c.claimed_by = token)
$$;

-- Every chunk with its state for ``model`` (default: embedding_space.model, what search uses).
CREATE OR REPLACE FUNCTION medpg.chunk_state(
    model text DEFAULT NULL, lease_seconds integer DEFAULT 600, max_attempts integer DEFAULT 5)
RETURNS TABLE (chunk_id bigint, document_id bigint, ordinal integer, state text, attempts integer,
               claimed_by text, claimed_at timestamptz, enqueued_at timestamptz, last_error text,
               failed_at timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT c.id, c.document_id, c.ordinal,
           CASE WHEN NOT w.needs_vector THEN 'embedded'
                WHEN c.claimed_at > now() - make_interval(secs => chunk_state.lease_seconds) THEN 'in_flight'
                WHEN c.attempts >= chunk_state.max_attempts THEN 'failed'
                WHEN c.last_error IS NOT NULL THEN 'retrying'
                ELSE 'pending' END,
           c.attempts, c.claimed_by, c.claimed_at, c.enqueued_at, c.last_error, c.failed_at
    FROM medpg.embedding_space e
    CROSS JOIN medpg.chunks c
    LEFT JOIN medpg.chunk_embeddings_staging s
           ON s.chunk_id = c.id AND s.model = coalesce(chunk_state.model, e.model)
          AND s.embedded_hash = c.content_hash
    CROSS JOIN LATERAL (
        SELECT CASE WHEN e.model IS NULL OR e.model = coalesce(chunk_state.model, e.model)
                    THEN c.embedded_hash IS DISTINCT FROM c.content_hash
                    ELSE s.chunk_id IS NULL END AS needs_vector
    ) w
$$;

COMMENT ON FUNCTION medpg.chunk_state(text, integer, integer) IS
    'Each chunk''s embedding state for a model (default embedding_space.model): embedded, in_flight, failed, retrying or pending';

-- The states with medpg's default lease (600 s) and attempts (5), for SQL clients and dashboards:
-- SELECT state, count(*) FROM medpg.chunk_states GROUP BY state;
CREATE OR REPLACE VIEW medpg.chunk_states WITH (security_invoker = true) AS SELECT * FROM medpg.chunk_state();

-- Lease up to ``max_chunks`` chunks that need a vector of ``model``: the given ``chunk_ids`` (those
-- still pending and free), or the next ones after ``after_id`` in id order. Each claim counts an
-- attempt; taking over an expired lease records why. Locked rows are skipped (SKIP LOCKED), so
-- several workers split the work without waiting on each other.
CREATE OR REPLACE FUNCTION medpg.claim_chunks(
    model text, token text, max_chunks integer,
    lease_seconds integer DEFAULT 600, max_attempts integer DEFAULT 5,
    after_id bigint DEFAULT NULL, chunk_ids bigint[] DEFAULT NULL)
RETURNS TABLE (chunk_id bigint, title text, chunk_text text, content_hash bytea)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    staging boolean := medpg.embedding_mode(model) = 'staging';
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT c.id FROM medpg.chunks c
        WHERE (claim_chunks.chunk_ids IS NULL OR c.id = ANY (claim_chunks.chunk_ids))
          AND (claim_chunks.after_id IS NULL OR c.id > claim_chunks.after_id)
          AND (staging OR medpg.chunk_vector_outdated(c))
          AND (NOT staging OR medpg.chunk_staged_vector_missing(c, claim_chunks.model))
          AND medpg.chunk_claimable(c, claim_chunks.token, claim_chunks.lease_seconds, claim_chunks.max_attempts)
        ORDER BY c.id
        LIMIT claim_chunks.max_chunks
        FOR UPDATE OF c SKIP LOCKED
    )
    UPDATE medpg.chunks c
    SET claimed_by = claim_chunks.token, claimed_at = now(), attempts = c.attempts + 1,
        last_error = CASE WHEN c.claimed_at IS NOT NULL AND c.claimed_by <> claim_chunks.token
                          THEN 'lease expired: the worker holding this chunk died or overran MEDPG_EMBED_LEASE_SECONDS'
                          ELSE c.last_error END
    FROM picked, medpg.documents d
    WHERE c.id = picked.id AND d.id = c.document_id
    RETURNING c.id, d.title, c.text, c.content_hash;
END
$$;

-- Stamp enqueued_at on the claimable chunks that need a vector of ``model`` (of these documents or
-- chunks, or all) and return their ids, for the caller to send to the broker after committing.
-- ``include_recent`` false leaves out chunks enqueued less than a lease ago (their message is
-- probably still queued).
CREATE OR REPLACE FUNCTION medpg.mark_enqueued(
    model text, lease_seconds integer DEFAULT 600, max_attempts integer DEFAULT 5,
    document_ids bigint[] DEFAULT NULL, chunk_ids bigint[] DEFAULT NULL,
    include_recent boolean DEFAULT true)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    staging boolean := medpg.embedding_mode(model) = 'staging';
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT c.id FROM medpg.chunks c
        WHERE (mark_enqueued.document_ids IS NULL OR c.document_id = ANY (mark_enqueued.document_ids))
          AND (mark_enqueued.chunk_ids IS NULL OR c.id = ANY (mark_enqueued.chunk_ids))
          AND (mark_enqueued.include_recent OR c.enqueued_at IS NULL
               OR c.enqueued_at < now() - make_interval(secs => mark_enqueued.lease_seconds))
          AND (staging OR medpg.chunk_vector_outdated(c))
          AND (NOT staging OR medpg.chunk_staged_vector_missing(c, mark_enqueued.model))
          AND medpg.chunk_claimable(c, '', mark_enqueued.lease_seconds, mark_enqueued.max_attempts)
        FOR UPDATE OF c SKIP LOCKED
    )
    UPDATE medpg.chunks c SET enqueued_at = now() FROM picked WHERE c.id = picked.id
    RETURNING c.id;
END
$$;

-- How many chunks could be claimed now (need a vector of ``model``, attempts left, no live lease).
CREATE OR REPLACE FUNCTION medpg.count_claimable(
    model text, lease_seconds integer DEFAULT 600, max_attempts integer DEFAULT 5)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    staging boolean := medpg.embedding_mode(model) = 'staging';
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM medpg.chunks c
    WHERE (staging OR medpg.chunk_vector_outdated(c))
      AND (NOT staging OR medpg.chunk_staged_vector_missing(c, count_claimable.model))
      AND medpg.chunk_claimable(c, '', count_claimable.lease_seconds, count_claimable.max_attempts);
    RETURN n;
END
$$;

-- Give chunks that ran out of attempts a fresh set; returns their ids (to embed or enqueue).
CREATE OR REPLACE FUNCTION medpg.reset_failed(model text, max_attempts integer DEFAULT 5)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    staging boolean := medpg.embedding_mode(model) = 'staging';
BEGIN
    RETURN QUERY
    UPDATE medpg.chunks c SET attempts = 0, last_error = NULL, failed_at = NULL,
           claimed_by = NULL, claimed_at = NULL
    WHERE c.attempts >= reset_failed.max_attempts
      AND (staging OR medpg.chunk_vector_outdated(c))
      AND (NOT staging OR medpg.chunk_staged_vector_missing(c, reset_failed.model))
    RETURNING c.id;
END
$$;
