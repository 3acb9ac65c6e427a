-- The BM25 index: postings in blocks and corpus statistics, kept current by statement-level
-- triggers on medpg.documents, so every writer (medpg ingest, the API, plain SQL) is covered.
--
-- Tables (revisions 0004 and 0006):
--   medpg.lexical_blocks     (lexeme, block_id) -> document_ids[], tf[], tf_title[], dl[], dl_title[],
--                            parallel arrays ordered by document id; at most 1,000 documents a block,
--                            all of one (tenant_id, patient_id), so row-level security can hide a
--                            block whole (revision 0008). Each row also keeps its bounds (revision
--                            0010): n_docs, max_tf, max_tf_title, min_dl, min_dl_title, for pruned
--                            BM25 (030_lexical_search.sql); they stay exact on insert and on removal.
--                            One block_id names one set of documents across all its lexemes.
--   medpg.lexical_documents  document_id -> the block holding its postings, dl, dl_title, its tenant
--                            and patient.
--   medpg.lexical_stats      per tenant, document count and total lengths in 16 slots (writer
--                            backend modulo 16), summed at query time, so concurrent writers rarely
--                            share a row.
-- The trigger function runs as the tables' owner (SECURITY DEFINER): a scoped writer (the API) keeps
-- the index current without any privilege on these tables, and cannot write statistics itself.
-- Document frequencies are not stored: a query counts them from the postings it reads anyway.
--
-- Lexemes come from the 'english' configuration, as documents.tsv. tf counts a lexeme's positions,
-- tf_title those with weight A (the title); dl / dl_title are the sums over the document. A
-- tsvector keeps at most 255 positions per lexeme (256 after concatenation) and clamps positions at
-- 16,383: where a document reaches either cap ("saturated"), its terms are counted again from the
-- title and body cut into pieces of at most 400 characters (medpg.lexical_exact_terms).

-- Term frequencies of a title and body counted over pieces of at most 400 characters, each far
-- below both tsvector caps.
CREATE OR REPLACE FUNCTION medpg.lexical_exact_terms(title text, body text)
RETURNS TABLE (lexeme text, tf integer, tf_title integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT u.lexeme, sum(cardinality(u.positions))::integer,
           sum(cardinality(u.positions) * s.is_title)::integer
    FROM (
        SELECT 1 AS is_title, m[1] AS piece
        FROM regexp_matches(coalesce(title, ''), '\S(?:.{0,199}.{0,199}\S)?(?=\s|$)|\S{250}', 'g') m
        UNION ALL
        SELECT 0, m[1]
        FROM regexp_matches(coalesce(body, ''), '\S(?:.{0,199}.{0,199}\S)?(?=\s|$)|\S{250}', 'g') m
    ) s,
    unnest(to_tsvector('english'::regconfig, s.piece)) u
    GROUP BY u.lexeme
$$;

COMMENT ON FUNCTION medpg.lexical_exact_terms(text, text) IS
    'Term frequencies of a title and body counted over pieces of at most 400 characters, exact where a single tsvector saturates';

-- Add documents (rows of medpg.documents) to the index: their postings as new blocks of at most
-- 1,000 documents of one tenant and patient in id order, their lengths, and their tenants'
-- statistics. One statement: arrays in document order and btree inserts in key order come from one
-- sort.
CREATE OR REPLACE FUNCTION medpg.lexical_add(docs medpg.documents[]) RETURNS void
LANGUAGE sql
AS $$
    WITH src AS MATERIALIZED (
        SELECT d.id, d.title, d.body, d.tsv, d.tenant_id, d.patient_id FROM unnest(docs) d
    ),
    f AS MATERIALIZED (
        SELECT d.id, u.lexeme COLLATE "C" AS lexeme, cardinality(u.positions) AS tf,
               cardinality(array_positions(u.weights, 'A')) AS tf_title,
               u.positions[cardinality(u.positions)] AS last_pos
        FROM src d, unnest(d.tsv) u
    ),
    lengths_from_tsv AS MATERIALIZED (
        SELECT f.id, sum(f.tf)::integer AS dl, sum(f.tf_title)::integer AS dl_title,
               bool_or(f.tf >= 255 OR f.last_pos >= 16383) AS saturated
        FROM f GROUP BY f.id
    ),
    exact AS MATERIALIZED (
        SELECT d.id, x.lexeme COLLATE "C" AS lexeme, x.tf, x.tf_title
        FROM src d
        JOIN lengths_from_tsv s ON s.id = d.id AND s.saturated
        CROSS JOIN LATERAL medpg.lexical_exact_terms(d.title, d.body) x
    ),
    exact_lengths AS (
        SELECT e.id, sum(e.tf)::integer AS dl, sum(e.tf_title)::integer AS dl_title FROM exact e GROUP BY e.id
    ),
    lengths AS MATERIALIZED (
        SELECT l.id, l.dl, l.dl_title FROM lengths_from_tsv l WHERE NOT l.saturated
        UNION ALL
        SELECT * FROM exact_lengths
    ),
    posting AS (
        SELECT f.id, f.lexeme, f.tf, f.tf_title, l.dl, l.dl_title
        FROM f JOIN lengths_from_tsv l ON l.id = f.id AND NOT l.saturated
        UNION ALL
        SELECT e.id, e.lexeme, e.tf, e.tf_title, x.dl, x.dl_title
        FROM exact e JOIN exact_lengths x ON x.id = e.id
    ),
    -- Documents of one tenant and patient in id order, 1,000 to a block, each block a new id from
    -- the sequence.
    grouped AS MATERIALIZED (
        SELECT l.id, l.dl, l.dl_title, src.tenant_id, src.patient_id,
               (row_number() OVER (PARTITION BY src.tenant_id, src.patient_id ORDER BY l.id) - 1) / 1000 AS g
        FROM lengths l JOIN src ON src.id = l.id
    ),
    blk AS MATERIALIZED (
        SELECT x.tenant_id, x.patient_id, x.g, nextval('medpg.lexical_block_seq') AS block_id
        FROM (SELECT DISTINCT tenant_id, patient_id, g FROM grouped ORDER BY 1, 2, 3) x
    ),
    placed AS MATERIALIZED (
        SELECT grouped.id, grouped.dl, grouped.dl_title, grouped.tenant_id, grouped.patient_id, blk.block_id
        FROM grouped
        JOIN blk ON blk.tenant_id = grouped.tenant_id AND blk.patient_id IS NOT DISTINCT FROM grouped.patient_id
                AND blk.g = grouped.g
    ),
    ld AS (
        INSERT INTO medpg.lexical_documents (document_id, block_id, dl, dl_title, tenant_id, patient_id)
        SELECT id, block_id, dl, dl_title, tenant_id, patient_id FROM placed
    ),
    ins AS (
        INSERT INTO medpg.lexical_blocks
            (lexeme, block_id, document_ids, tf, tf_title, dl, dl_title, tenant_id, patient_id,
             n_docs, max_tf, max_tf_title, min_dl, min_dl_title)
        SELECT s.lexeme, s.block_id, array_agg(s.id), array_agg(s.tf), array_agg(s.tf_title),
               array_agg(s.dl), array_agg(s.dl_title), min(s.tenant_id), min(s.patient_id),
               count(*), max(s.tf), max(s.tf_title), min(s.dl), min(s.dl_title)
        FROM (
            SELECT p.lexeme, pl.block_id, p.id, p.tf, p.tf_title, p.dl, p.dl_title, pl.tenant_id, pl.patient_id
            FROM posting p JOIN placed pl ON pl.id = p.id
            ORDER BY p.lexeme, pl.block_id, p.id
        ) s
        GROUP BY s.lexeme, s.block_id
    )
    -- Every document counts, also one without lexemes; lengths are those of documents with some.
    INSERT INTO medpg.lexical_stats AS s (tenant_id, slot, documents, length, title_length)
    SELECT src.tenant_id, pg_backend_pid() % 16, count(*),
           coalesce(sum(l.dl), 0), coalesce(sum(l.dl_title), 0)
    FROM src LEFT JOIN lengths l ON l.id = src.id
    GROUP BY src.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE SET
        documents = s.documents + EXCLUDED.documents,
        length = s.length + EXCLUDED.length,
        title_length = s.title_length + EXCLUDED.title_length
$$;

-- The (lexeme, block) rows holding postings of these documents, with the documents' ids.
CREATE OR REPLACE FUNCTION medpg.lexical_hits(docs medpg.documents[])
RETURNS TABLE (block_id bigint, lexeme text, ids bigint[])
LANGUAGE sql STABLE
AS $$
    SELECT ld.block_id, l.lexeme COLLATE "C", array_agg(ld.document_id)
    FROM unnest(docs) o
    JOIN medpg.lexical_documents ld ON ld.document_id = o.id
    CROSS JOIN LATERAL unnest(tsvector_to_array(o.tsv)) l(lexeme)
    GROUP BY 1, 2
$$;

-- Take documents (rows as they were before an UPDATE or DELETE) out of the index: out of their
-- blocks' arrays (a block row left empty is deleted), out of lexical_documents and their tenants'
-- statistics.
-- The block rows are locked in key order by one statement before the next reads and rewrites
-- them, so concurrent writers to one block queue up instead of overwriting each other's arrays.
CREATE OR REPLACE FUNCTION medpg.lexical_remove(docs medpg.documents[]) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM 1 FROM medpg.lexical_blocks b
    JOIN medpg.lexical_hits(docs) h ON b.lexeme = h.lexeme COLLATE "C" AND b.block_id = h.block_id
    ORDER BY b.lexeme, b.block_id
    FOR UPDATE OF b;

    WITH hit AS MATERIALIZED (
        SELECT * FROM medpg.lexical_hits(docs)
    ),
    kept AS MATERIALIZED (
        SELECT b.lexeme, b.block_id, k.*
        FROM hit h
        JOIN medpg.lexical_blocks b ON b.lexeme = h.lexeme COLLATE "C" AND b.block_id = h.block_id
        CROSS JOIN LATERAL (
            SELECT array_agg(u.document_ids ORDER BY u.document_ids) AS document_ids,
                   array_agg(u.tf ORDER BY u.document_ids) AS tf,
                   array_agg(u.tf_title ORDER BY u.document_ids) AS tf_title,
                   array_agg(u.dl ORDER BY u.document_ids) AS dl,
                   array_agg(u.dl_title ORDER BY u.document_ids) AS dl_title,
                   count(*) AS n_docs, max(u.tf) AS max_tf, max(u.tf_title) AS max_tf_title,
                   min(u.dl) AS min_dl, min(u.dl_title) AS min_dl_title
            FROM unnest(b.document_ids, b.tf, b.tf_title, b.dl, b.dl_title)
                AS u(document_ids, tf, tf_title, dl, dl_title)
            WHERE u.document_ids <> ALL (h.ids)
        ) k
    ),
    upd AS (
        UPDATE medpg.lexical_blocks b
        SET document_ids = k.document_ids, tf = k.tf, tf_title = k.tf_title, dl = k.dl, dl_title = k.dl_title,
            n_docs = k.n_docs, max_tf = k.max_tf, max_tf_title = k.max_tf_title, min_dl = k.min_dl,
            min_dl_title = k.min_dl_title
        FROM kept k
        WHERE b.lexeme = k.lexeme AND b.block_id = k.block_id AND k.document_ids IS NOT NULL
    ),
    del AS (
        DELETE FROM medpg.lexical_blocks b USING kept k
        WHERE b.lexeme = k.lexeme AND b.block_id = k.block_id AND k.document_ids IS NULL
    ),
    gone AS (
        DELETE FROM medpg.lexical_documents ld USING unnest(docs) o WHERE ld.document_id = o.id
        RETURNING ld.document_id, ld.dl, ld.dl_title
    )
    INSERT INTO medpg.lexical_stats AS s (tenant_id, slot, documents, length, title_length)
    SELECT o.tenant_id, pg_backend_pid() % 16, -count(*), -coalesce(sum(gone.dl), 0),
           -coalesce(sum(gone.dl_title), 0)
    FROM unnest(docs) o LEFT JOIN gone ON gone.document_id = o.id
    GROUP BY o.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE SET
        documents = s.documents + EXCLUDED.documents,
        length = s.length + EXCLUDED.length,
        title_length = s.title_length + EXCLUDED.title_length;
END
$$;

-- The trigger function: one set-based call per write statement, as the tables' owner.
CREATE OR REPLACE FUNCTION medpg.lexical_documents_changed() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- one batch's postings (~100 per document) are hashed and sorted in memory, not on disk
SET work_mem = '64MB'
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM medpg.lexical_add(ARRAY(SELECT n::medpg.documents FROM new_docs n));
    ELSIF TG_OP = 'UPDATE' THEN
        -- Only rows whose text (tsv), tenant, patient or id changed: a metadata change costs nothing.
        PERFORM medpg.lexical_remove(ARRAY(
            SELECT o::medpg.documents FROM old_docs o
            WHERE NOT EXISTS (SELECT 1 FROM new_docs n
                              WHERE n.id = o.id AND (n.tsv, n.tenant_id, n.patient_id)
                                                    IS NOT DISTINCT FROM (o.tsv, o.tenant_id, o.patient_id))));
        PERFORM medpg.lexical_add(ARRAY(
            SELECT n::medpg.documents FROM new_docs n
            WHERE NOT EXISTS (SELECT 1 FROM old_docs o
                              WHERE o.id = n.id AND (o.tsv, o.tenant_id, o.patient_id)
                                                    IS NOT DISTINCT FROM (n.tsv, n.tenant_id, n.patient_id))));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM medpg.lexical_remove(ARRAY(SELECT o::medpg.documents FROM old_docs o));
    ELSIF TG_OP = 'TRUNCATE' THEN
        TRUNCATE medpg.lexical_blocks, medpg.lexical_documents;
        DELETE FROM medpg.lexical_stats;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER lexical_insert
    AFTER INSERT ON medpg.documents REFERENCING NEW TABLE AS new_docs
    FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed();
CREATE OR REPLACE TRIGGER lexical_update
    AFTER UPDATE ON medpg.documents REFERENCING OLD TABLE AS old_docs NEW TABLE AS new_docs
    FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed();
CREATE OR REPLACE TRIGGER lexical_delete
    AFTER DELETE ON medpg.documents REFERENCING OLD TABLE AS old_docs
    FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed();
CREATE OR REPLACE TRIGGER lexical_truncate
    AFTER TRUNCATE ON medpg.documents
    FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed();

-- Recompute the whole index from medpg.documents (after changing the text search configuration,
-- or a restore that skipped triggers); returns the number of postings.
CREATE OR REPLACE FUNCTION medpg.rebuild_lexical_index() RETURNS bigint
LANGUAGE plpgsql
SET work_mem = '256MB'
AS $$
DECLARE
    n bigint;
    last_id bigint := NULL;
    docs medpg.documents[];
BEGIN
    -- Writers wait (SHARE blocks INSERT/UPDATE/DELETE) so nothing changes under the rebuild.
    LOCK TABLE medpg.documents IN SHARE MODE;
    TRUNCATE medpg.lexical_blocks, medpg.lexical_documents;
    DELETE FROM medpg.lexical_stats;
    LOOP
        -- 1,000 documents at a time, in id order: blocks of one tenant and patient each.
        docs := ARRAY(SELECT d FROM medpg.documents d WHERE last_id IS NULL OR d.id > last_id
                      ORDER BY d.id LIMIT 1000);
        EXIT WHEN cardinality(docs) = 0;
        PERFORM medpg.lexical_add(docs);
        last_id := docs[cardinality(docs)].id;
    END LOOP;
    -- Fresh statistics, or the planner guesses at tables that just changed completely.
    ANALYZE medpg.lexical_blocks;
    ANALYZE medpg.lexical_documents;
    SELECT coalesce(sum(cardinality(document_ids)), 0) INTO n FROM medpg.lexical_blocks;
    RETURN n;
END
$$;

COMMENT ON FUNCTION medpg.rebuild_lexical_index() IS
    'Recompute BM25 postings and statistics from medpg.documents; returns the number of postings';

-- The views run with the caller's privileges (security_invoker), so row-level security applies.
CREATE OR REPLACE VIEW medpg.lexical_postings WITH (security_invoker = true) AS
SELECT b.lexeme, u.document_id, u.tf, u.dl, u.tf_title, u.dl_title
FROM medpg.lexical_blocks b
CROSS JOIN LATERAL unnest(b.document_ids, b.tf, b.tf_title, b.dl, b.dl_title)
    AS u(document_id, tf, tf_title, dl, dl_title);

COMMENT ON VIEW medpg.lexical_postings IS
    'One row per (lexeme, document) with term frequencies and document lengths, unnested from medpg.lexical_blocks; filter on lexeme to read only its rows';

CREATE OR REPLACE VIEW medpg.lexical_document_frequencies WITH (security_invoker = true) AS
SELECT lexeme, sum(cardinality(document_ids)) AS document_frequency
FROM medpg.lexical_blocks GROUP BY lexeme;

-- The corpus BM25 scores against, as the caller sees it (medpg.lexical_scope_stats): all of it for
-- the owner, a tenant's documents for a tenant-wide role, a patient-bound role's own documents.
CREATE OR REPLACE FUNCTION medpg.lexical_scope_stats()
RETURNS TABLE (documents bigint, length bigint, title_length bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(sum(s.documents), 0)::bigint, coalesce(sum(s.length), 0)::bigint,
           coalesce(sum(s.title_length), 0)::bigint
    FROM medpg.lexical_stats s
    HAVING NOT medpg.patient_scoped()
    UNION ALL
    SELECT (SELECT count(*) FROM medpg.documents), coalesce(sum(ld.dl), 0)::bigint,
           coalesce(sum(ld.dl_title), 0)::bigint
    FROM medpg.lexical_documents ld
    HAVING medpg.patient_scoped()
$$;

COMMENT ON FUNCTION medpg.lexical_scope_stats() IS
    'Documents and total lengths of the corpus the caller can see: BM25''s N and average length';

CREATE OR REPLACE VIEW medpg.lexical_corpus WITH (security_invoker = true) AS
SELECT s.documents::numeric AS documents, s.length::numeric AS total_length,
       s.title_length::numeric AS total_title_length,
       s.length::float8 / greatest(s.documents, 1) AS average_length
FROM medpg.lexical_scope_stats() s;
