"""BM25 postings and corpus statistics, kept current by statement-level triggers on documents.

- ``medpg.lexical_postings``: one row per (lexeme, document) with the term frequency ``tf``
  (title + body), the title's share ``tf_title``, and the document's length ``dl`` / ``dl_title``
  (in lexeme occurrences, stopwords excluded), so a BM25 query reads one index range per query
  term and nothing else (index-only scans on the primary key, which INCLUDEs the numbers).
  Keeping the title's share apart lets the title weight be chosen at query time.
- ``medpg.lexical_stats``: document count and total lengths, split over 16 slots chosen by backend
  so concurrent writers rarely update the same row; search sums the slots.
- Document frequencies are not stored as counters: a BM25 query scans every posting of its terms
  anyway, so it counts them on the way (exact in the query's snapshot, and writers never contend
  on rows of common terms). ``medpg.lexical_document_frequencies`` and ``medpg.lexical_corpus``
  are views for inspection.

Term frequencies come from the stored ``documents.tsv`` when it is exact. A tsvector keeps at
most 255 positions per lexeme (256 after concatenation) and clamps positions at 16,383, so for a
document where any lexeme reaches 255 positions or position 16,383 the rows are recomputed from
the title and body cut at whitespace into pieces of at most 400 characters
(``medpg.lexical_exact_terms``), each far below both caps.

Triggers (AFTER ... FOR EACH STATEMENT, with transition tables): INSERT adds postings and stats;
UPDATE removes and re-adds only documents whose tsvector changed; DELETE removes them (the
lexemes to delete come from the old tsvector, the lengths to subtract from the deleted rows);
TRUNCATE empties both tables. ``medpg.rebuild_lexical_index()`` recomputes everything (after
changing the text search configuration, or a restore that skipped triggers).

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STAT_SLOTS = 16
# A lexeme at this many positions, or a position at the clamp, means the tsvector may be truncated.
SATURATED_POSITIONS = 255
MAX_POSITION = 16383

# Postings rows (id, lexeme, tf, tf_title, dl, dl_title) for the documents of {src}; the one
# definition used by the insert trigger, the update trigger and the rebuild.
_ROWS = f"""
f AS MATERIALIZED (
    SELECT d.id, u.lexeme, cardinality(u.positions) AS tf,
           cardinality(array_positions(u.weights, 'A')) AS tf_title,
           u.positions[cardinality(u.positions)] AS last_pos
    FROM {{src}} d, unnest(d.tsv) u
),
docs AS MATERIALIZED (
    SELECT f.id, sum(f.tf)::integer AS dl, sum(f.tf_title)::integer AS dl_title,
           bool_or(f.tf >= {SATURATED_POSITIONS} OR f.last_pos >= {MAX_POSITION}) AS saturated
    FROM f GROUP BY f.id
),
exact AS MATERIALIZED (
    SELECT d.id, x.lexeme, x.tf, x.tf_title
    FROM {{src}} d
    JOIN docs s ON s.id = d.id AND s.saturated
    CROSS JOIN LATERAL medpg.lexical_exact_terms(d.title, d.body) x
),
exact_docs AS (
    SELECT e.id, sum(e.tf)::integer AS dl, sum(e.tf_title)::integer AS dl_title FROM exact e GROUP BY e.id
),
lengths AS (
    SELECT docs.id, docs.dl, docs.dl_title FROM docs WHERE NOT docs.saturated
    UNION ALL
    SELECT * FROM exact_docs
),
ins AS (
    INSERT INTO medpg.lexical_postings (document_id, tf, dl, tf_title, dl_title, lexeme)
    SELECT r.id, r.tf, r.dl, r.tf_title, r.dl_title, r.lexeme
    FROM (
        SELECT f.id, f.tf, docs.dl, f.tf_title, docs.dl_title, f.lexeme
        FROM f JOIN docs ON docs.id = f.id AND NOT docs.saturated
        UNION ALL
        SELECT e.id, e.tf, x.dl, e.tf_title, x.dl_title, e.lexeme
        FROM exact e JOIN exact_docs x ON x.id = e.id
    ) r
    -- btree inserts in key order touch each leaf page once per statement
    ORDER BY r.lexeme COLLATE "C", r.id
)
"""

_ADD_STATS = f"""
INSERT INTO medpg.lexical_stats AS s (slot, documents, length, title_length)
SELECT pg_backend_pid() % {STAT_SLOTS}, {{sign}}(SELECT count(*) FROM {{src}}),
       {{sign}}coalesce(sum(dl), 0), {{sign}}coalesce(sum(dl_title), 0)
FROM {{lengths}}
HAVING EXISTS (SELECT 1 FROM {{src}} e)
ON CONFLICT (slot) DO UPDATE SET
    documents = s.documents + EXCLUDED.documents,
    length = s.length + EXCLUDED.length,
    title_length = s.title_length + EXCLUDED.title_length
"""


def _add(src: str) -> str:
    """One statement: postings and stats for the documents of ``src`` (a relation or subquery)."""
    return "WITH " + _ROWS.format(src=src) + _ADD_STATS.format(src=src, sign="", lengths="lengths")


def _remove(src: str) -> str:
    """One statement: delete the postings of the documents of ``src`` and subtract their stats."""
    return f"""
WITH del AS (
    DELETE FROM medpg.lexical_postings p
    USING (SELECT o.id, l.lexeme FROM {src} o, unnest(tsvector_to_array(o.tsv)) l(lexeme)) x
    WHERE p.lexeme = x.lexeme COLLATE "C" AND p.document_id = x.id
    RETURNING p.document_id, p.dl, p.dl_title
),
gone AS (SELECT DISTINCT document_id, dl, dl_title FROM del)
""" + _ADD_STATS.format(src=src, sign="-", lengths="gone")


# Rows of an UPDATE whose text changed (or whose id did): their postings are replaced.
_CHANGED_OLD = (
    "(SELECT o.* FROM old_docs o WHERE NOT EXISTS "
    "(SELECT 1 FROM new_docs n WHERE n.id = o.id AND n.tsv IS NOT DISTINCT FROM o.tsv))"
)
_CHANGED_NEW = (
    "(SELECT n.* FROM new_docs n WHERE NOT EXISTS "
    "(SELECT 1 FROM old_docs o WHERE o.id = n.id AND o.tsv IS NOT DISTINCT FROM n.tsv))"
)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE medpg.lexical_postings (
            document_id bigint  NOT NULL,
            tf          integer NOT NULL,
            dl          integer NOT NULL,
            tf_title    integer NOT NULL,
            dl_title    integer NOT NULL,
            lexeme      text COLLATE "C" NOT NULL,
            CONSTRAINT lexical_postings_pkey PRIMARY KEY (lexeme, document_id) INCLUDE (tf, dl, tf_title, dl_title)
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE medpg.lexical_postings IS 'BM25 postings of medpg.documents (english "
        "configuration): kept by triggers on medpg.documents; rebuild with medpg.rebuild_lexical_index()'"
    )
    op.execute(
        """
        CREATE TABLE medpg.lexical_stats (
            slot         smallint PRIMARY KEY,
            documents    bigint NOT NULL DEFAULT 0,
            length       bigint NOT NULL DEFAULT 0,
            title_length bigint NOT NULL DEFAULT 0
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE medpg.lexical_stats IS 'Document count and total lengths for BM25, summed over "
        "slots (one per writer backend modulo 16, so concurrent writers rarely share a row)'"
    )
    op.execute(
        r"""
        CREATE FUNCTION medpg.lexical_exact_terms(title text, body text)
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
        $$
        """
    )
    op.execute(
        "COMMENT ON FUNCTION medpg.lexical_exact_terms(text, text) IS 'Term frequencies of a title and "
        "body counted over pieces of at most 400 characters, exact where a single tsvector saturates'"
    )
    op.execute(
        f"""
        CREATE FUNCTION medpg.lexical_documents_changed() RETURNS trigger
        LANGUAGE plpgsql
        -- one batch's postings (~100 per document) are hashed and sorted in memory, not on disk
        SET work_mem = '64MB'
        AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                {_add("new_docs")};
            ELSIF TG_OP = 'UPDATE' THEN
                {_remove(_CHANGED_OLD)};
                {_add(_CHANGED_NEW)};
            ELSIF TG_OP = 'DELETE' THEN
                {_remove("old_docs")};
            ELSIF TG_OP = 'TRUNCATE' THEN
                TRUNCATE medpg.lexical_postings;
                DELETE FROM medpg.lexical_stats;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER lexical_insert AFTER INSERT ON medpg.documents REFERENCING NEW TABLE AS new_docs "
        "FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed()"
    )
    op.execute(
        "CREATE TRIGGER lexical_update AFTER UPDATE ON medpg.documents "
        "REFERENCING OLD TABLE AS old_docs NEW TABLE AS new_docs "
        "FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed()"
    )
    op.execute(
        "CREATE TRIGGER lexical_delete AFTER DELETE ON medpg.documents REFERENCING OLD TABLE AS old_docs "
        "FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed()"
    )
    op.execute(
        "CREATE TRIGGER lexical_truncate AFTER TRUNCATE ON medpg.documents "
        "FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed()"
    )
    op.execute(
        f"""
        CREATE FUNCTION medpg.rebuild_lexical_index() RETURNS bigint
        LANGUAGE plpgsql
        SET work_mem = '256MB'
        AS $$
        DECLARE
            n bigint;
        BEGIN
            -- Writers wait (SHARE blocks INSERT/UPDATE/DELETE) so nothing changes under the rebuild.
            LOCK TABLE medpg.documents IN SHARE MODE;
            TRUNCATE medpg.lexical_postings;
            DELETE FROM medpg.lexical_stats;
            {_add("medpg.documents")};
            -- Fresh statistics, or the planner guesses at a table that just changed completely.
            ANALYZE medpg.lexical_postings;
            SELECT count(*) INTO n FROM medpg.lexical_postings;
            RETURN n;
        END
        $$
        """
    )
    op.execute(
        "COMMENT ON FUNCTION medpg.rebuild_lexical_index() IS 'Recompute BM25 postings and statistics "
        "from medpg.documents; returns the number of postings'"
    )
    op.execute(
        """
        CREATE VIEW medpg.lexical_document_frequencies AS
        SELECT lexeme, count(*) AS document_frequency FROM medpg.lexical_postings GROUP BY lexeme
        """
    )
    op.execute(
        """
        CREATE VIEW medpg.lexical_corpus AS
        SELECT coalesce(sum(documents), 0) AS documents,
               coalesce(sum(length), 0) AS total_length,
               coalesce(sum(title_length), 0) AS total_title_length,
               coalesce(sum(length), 0)::float8 / greatest(coalesce(sum(documents), 0), 1) AS average_length
        FROM medpg.lexical_stats
        """
    )
    # Documents that exist before this revision (an upgrade of a populated database).
    op.execute("SELECT medpg.rebuild_lexical_index()")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS medpg.lexical_corpus")
    op.execute("DROP VIEW IF EXISTS medpg.lexical_document_frequencies")
    for name in ("lexical_insert", "lexical_update", "lexical_delete", "lexical_truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON medpg.documents")
    op.execute("DROP FUNCTION IF EXISTS medpg.rebuild_lexical_index()")
    op.execute("DROP FUNCTION IF EXISTS medpg.lexical_documents_changed()")
    op.execute("DROP FUNCTION IF EXISTS medpg.lexical_exact_terms(text, text)")
    op.execute("DROP TABLE IF EXISTS medpg.lexical_stats")
    op.execute("DROP TABLE IF EXISTS medpg.lexical_postings")
