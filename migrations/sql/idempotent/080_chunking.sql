-- Any writer covered: a document inserted, or whose title or body changed, by a writer that does
-- not cut its chunks itself (plain SQL, a tool outside medpg) is queued in medpg.chunking_queue,
-- and in the same transaction its chunks whose passage no longer reproduces the new body are
-- deleted, so search never shows evidence from text that is no longer the document's. The rest
-- keep their vectors until the document is chunked again (``medpg embed``, the workers' reconcile:
-- medpg/embedding/rechunk.py), which gives every changed chunk a new content hash, so it is
-- embedded again. A DELETE removes chunks and queue entry by their foreign keys.
--
-- medpg's own writer (medpg ingest, the API) cuts chunks in the same transaction and says so with
-- SET LOCAL medpg.writer_chunks = 'on': its statements are not queued.

-- As the tables' owner (SECURITY DEFINER): a scoped writer has no privilege on the queue.
CREATE OR REPLACE FUNCTION medpg.documents_text_changed() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF coalesce(current_setting('medpg.writer_chunks', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO medpg.chunking_queue AS q (document_id)
        SELECT n.id FROM new_docs n ORDER BY n.id
        ON CONFLICT (document_id) DO UPDATE SET queued_at = now();
    ELSE
        DELETE FROM medpg.chunks c
        USING new_docs n JOIN old_docs o ON o.id = n.id
        WHERE c.document_id = n.id
          AND (n.title, n.body) IS DISTINCT FROM (o.title, o.body)
          AND substr(n.body, c.char_start + 1, c.char_end - c.char_start) IS DISTINCT FROM c.text;
        INSERT INTO medpg.chunking_queue AS q (document_id)
        SELECT n.id FROM new_docs n JOIN old_docs o ON o.id = n.id
        WHERE (n.title, n.body) IS DISTINCT FROM (o.title, o.body)
        ORDER BY n.id
        ON CONFLICT (document_id) DO UPDATE SET queued_at = now();
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER chunking_insert
    AFTER INSERT ON medpg.documents REFERENCING NEW TABLE AS new_docs
    FOR EACH STATEMENT EXECUTE FUNCTION medpg.documents_text_changed();
CREATE OR REPLACE TRIGGER chunking_update
    AFTER UPDATE ON medpg.documents REFERENCING OLD TABLE AS old_docs NEW TABLE AS new_docs
    FOR EACH STATEMENT EXECUTE FUNCTION medpg.documents_text_changed();

-- Replace documents' chunks with newly cut ones (parallel arrays, one element per chunk, every
-- chunk of each listed document). A chunk whose text is unchanged keeps its vector and attempt
-- count; a changed one is pending again because its content_hash no longer equals embedded_hash;
-- ordinals past a document's new last chunk are deleted. Each passage must reproduce its
-- document's body at its offsets, or nothing is written. Returns the chunks inserted or changed.
CREATE OR REPLACE FUNCTION medpg.replace_chunks(
    document_ids bigint[], ordinals integer[], texts text[], char_starts integer[], char_ends integer[],
    token_counts integer[], content_hashes bytea[])
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    written bigint;
    bad bigint;
BEGIN
    SELECT x.document_id INTO bad
    FROM unnest(document_ids, ordinals, texts, char_starts, char_ends) AS x(document_id, ordinal, text, cs, ce)
    JOIN medpg.documents d ON d.id = x.document_id
    WHERE substr(d.body, x.cs + 1, x.ce - x.cs) IS DISTINCT FROM x.text
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'medpg.replace_chunks: a chunk of document % does not reproduce its body at its offsets', bad
            USING ERRCODE = '22023';
    END IF;
    WITH new AS (
        SELECT * FROM unnest(document_ids, ordinals, texts, char_starts, char_ends, token_counts, content_hashes)
            AS x(document_id, ordinal, text, char_start, char_end, token_count, content_hash)
    ),
    up AS (
        INSERT INTO medpg.chunks AS c (document_id, ordinal, text, char_start, char_end, token_count, content_hash)
        SELECT n.document_id, n.ordinal, n.text, n.char_start, n.char_end, n.token_count, n.content_hash
        FROM new n
        ORDER BY n.document_id, n.ordinal
        ON CONFLICT (document_id, ordinal) DO UPDATE SET
            text = EXCLUDED.text, char_start = EXCLUDED.char_start, char_end = EXCLUDED.char_end,
            token_count = EXCLUDED.token_count, content_hash = EXCLUDED.content_hash,
            attempts = CASE WHEN c.content_hash = EXCLUDED.content_hash THEN c.attempts ELSE 0 END,
            last_error = CASE WHEN c.content_hash = EXCLUDED.content_hash THEN c.last_error END,
            failed_at = CASE WHEN c.content_hash = EXCLUDED.content_hash THEN c.failed_at END
        WHERE (c.content_hash, c.char_start, c.char_end, c.token_count, c.text)
              IS DISTINCT FROM (EXCLUDED.content_hash, EXCLUDED.char_start, EXCLUDED.char_end,
                                EXCLUDED.token_count, EXCLUDED.text)
        RETURNING 1
    )
    SELECT count(*) INTO written FROM up;
    DELETE FROM medpg.chunks c
    USING (SELECT x.document_id, max(x.ordinal) AS last
           FROM unnest(document_ids, ordinals) AS x(document_id, ordinal) GROUP BY x.document_id) s
    WHERE c.document_id = s.document_id AND c.ordinal > s.last;
    RETURN written;
END
$$;
