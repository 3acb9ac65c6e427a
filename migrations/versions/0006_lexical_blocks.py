"""BM25 postings grouped in blocks: one row per (lexeme, block of documents), not one per posting.

A first load of 100k NFCorpus abstracts spent most of its server time writing ~10M posting rows
(a heap tuple and a btree entry each: ~9 us of server time apiece, even when all of them were
written by one sorted statement). Now every
INSERT statement on ``medpg.documents`` (an ingest batch's COPY, or an application's INSERT) cuts
its documents into blocks of at most ``BLOCK_DOCUMENTS`` and writes one row per distinct lexeme
of each block, holding parallel arrays: the documents that contain the lexeme (in id order), their
term frequencies and their lengths. A 1,000-document batch writes ~13k rows instead of ~100k.

- ``medpg.lexical_blocks``: (lexeme, block_id) -> document_ids[], tf[], tf_title[], dl[], dl_title[].
- ``medpg.lexical_documents``: the block holding each document's postings and its lengths, so an
  UPDATE or DELETE rewrites exactly that block's rows for the document's lexemes and subtracts
  its lengths without reading arrays. Those rows are locked in key order by one statement before
  the next one reads and rewrites them, so concurrent writers to one block queue up instead of
  overwriting each other's arrays.
- ``medpg.lexical_postings`` becomes a view over the blocks with the columns of the table it
  replaces (lexeme, document_id, tf, dl, tf_title, dl_title): ``medpg.bm25_scores`` and any SQL
  reading postings by lexeme run unchanged.
- ``medpg.hybrid_search`` finds a result's matched lexemes through its block (redefined here).

Statistics (``medpg.lexical_stats`` and its view ``medpg.lexical_corpus``, both kept as they are),
the exact counts for saturated tsvectors, the TRUNCATE handling, ``medpg.rebuild_lexical_index()``
and ``medpg.lexical_document_frequencies`` keep their 0004 meaning.

Revision ID: 0006
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Documents per block: larger blocks mean fewer rows to write and read; smaller ones, less array to
# rewrite when one document changes. One ingest batch (MEDPG_INGEST_BATCH_SIZE, 1000) fills one.
BLOCK_DOCUMENTS = 1000
ARRAYS = ("document_ids", "tf", "tf_title", "dl", "dl_title")


def _sibling(name: str) -> ModuleType:
    """An earlier revision's module (file names start with digits, so no plain import)."""
    path = next(Path(__file__).parent.glob(f"{name}_*.py"))
    spec = importlib.util.spec_from_file_location(f"medpg_revision_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Unchanged from 0004: the saturation thresholds, the statistics upsert and the changed-row sets.
_REV4 = _sibling("0004")
SATURATED_POSITIONS: int = _REV4.SATURATED_POSITIONS
MAX_POSITION: int = _REV4.MAX_POSITION
_ADD_STATS: str = _REV4._ADD_STATS
_CHANGED_OLD: str = _REV4._CHANGED_OLD
_CHANGED_NEW: str = _REV4._CHANGED_NEW


# Postings (id, lexeme, tf, tf_title, dl, dl_title) and lengths of the documents of {src}, as in
# 0004: from the stored tsvector, or recounted over short pieces where the tsvector saturates.
_POSTINGS = f"""
f AS MATERIALIZED (
    SELECT d.id, u.lexeme COLLATE "C" AS lexeme, cardinality(u.positions) AS tf,
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
    SELECT d.id, x.lexeme COLLATE "C" AS lexeme, x.tf, x.tf_title
    FROM {{src}} d
    JOIN docs s ON s.id = d.id AND s.saturated
    CROSS JOIN LATERAL medpg.lexical_exact_terms(d.title, d.body) x
),
exact_docs AS (
    SELECT e.id, sum(e.tf)::integer AS dl, sum(e.tf_title)::integer AS dl_title FROM exact e GROUP BY e.id
),
lengths AS MATERIALIZED (
    SELECT docs.id, docs.dl, docs.dl_title FROM docs WHERE NOT docs.saturated
    UNION ALL
    SELECT * FROM exact_docs
),
posting AS (
    SELECT f.id, f.lexeme, f.tf, f.tf_title, docs.dl, docs.dl_title
    FROM f JOIN docs ON docs.id = f.id AND NOT docs.saturated
    UNION ALL
    SELECT e.id, e.lexeme, e.tf, e.tf_title, x.dl, x.dl_title
    FROM exact e JOIN exact_docs x ON x.id = e.id
),
-- Documents in id order, BLOCK_DOCUMENTS to a block, each block a new id from the sequence.
grouped AS MATERIALIZED (
    SELECT l.id, l.dl, l.dl_title, (row_number() OVER (ORDER BY l.id) - 1) / {BLOCK_DOCUMENTS} AS g
    FROM lengths l
),
blk AS MATERIALIZED (
    SELECT x.g, nextval('medpg.lexical_block_seq') AS block_id FROM (SELECT DISTINCT g FROM grouped ORDER BY g) x
),
placed AS MATERIALIZED (
    SELECT grouped.id, grouped.dl, grouped.dl_title, blk.block_id
    FROM grouped JOIN blk ON blk.g = grouped.g
),
ld AS (
    INSERT INTO medpg.lexical_documents (document_id, block_id, dl, dl_title)
    SELECT id, block_id, dl, dl_title FROM placed
),
ins AS (
    INSERT INTO medpg.lexical_blocks (lexeme, block_id, {", ".join(ARRAYS)})
    SELECT s.lexeme, s.block_id, array_agg(s.id), array_agg(s.tf), array_agg(s.tf_title),
           array_agg(s.dl), array_agg(s.dl_title)
    FROM (
        -- one sort: arrays in document order, and btree inserts in key order (each leaf page
        -- touched once per statement)
        SELECT p.lexeme, pl.block_id, p.id, p.tf, p.tf_title, p.dl, p.dl_title
        FROM posting p JOIN placed pl ON pl.id = p.id
        ORDER BY p.lexeme, pl.block_id, p.id
    ) s
    GROUP BY s.lexeme, s.block_id
)
"""


def _add(src: str) -> str:
    """One statement: blocks, document rows and stats for the documents of ``src``."""
    return "WITH " + _POSTINGS.format(src=src) + _ADD_STATS.format(src=src, sign="", lengths="lengths")


# The (lexeme, block) rows holding postings of the documents of {src}.
_HIT = """
SELECT ld.block_id, l.lexeme COLLATE "C" AS lexeme, array_agg(ld.document_id) AS ids
FROM {src} o
JOIN medpg.lexical_documents ld ON ld.document_id = o.id
CROSS JOIN LATERAL unnest(tsvector_to_array(o.tsv)) l(lexeme)
GROUP BY 1, 2
"""


def _lock(src: str) -> str:
    """Lock the block rows the removal of ``src`` rewrites, in key order (no deadlock between writers)."""
    return f"""
PERFORM 1 FROM medpg.lexical_blocks b
JOIN ({_HIT.format(src=src)}) h ON b.lexeme = h.lexeme AND b.block_id = h.block_id
ORDER BY b.lexeme, b.block_id
FOR UPDATE OF b
"""


def _remove(src: str) -> str:
    """One statement, run after ``_lock``: drop the documents of ``src`` from their blocks and stats."""
    aggs = ", ".join(f"array_agg(u.{a} ORDER BY u.document_ids) AS {a}" for a in ARRAYS)
    sets = ", ".join(f"{a} = k.{a}" for a in ARRAYS)
    return f"""
WITH hit AS MATERIALIZED ({_HIT.format(src=src)}),
kept AS MATERIALIZED (
    SELECT b.lexeme, b.block_id, k.*
    FROM hit h
    JOIN medpg.lexical_blocks b ON b.lexeme = h.lexeme AND b.block_id = h.block_id
    CROSS JOIN LATERAL (
        SELECT {aggs}
        FROM unnest(b.document_ids, b.tf, b.tf_title, b.dl, b.dl_title) u({", ".join(ARRAYS)})
        WHERE u.document_ids <> ALL (h.ids)
    ) k
),
upd AS (
    UPDATE medpg.lexical_blocks b SET {sets}
    FROM kept k
    WHERE b.lexeme = k.lexeme AND b.block_id = k.block_id AND k.document_ids IS NOT NULL
),
del AS (
    DELETE FROM medpg.lexical_blocks b USING kept k
    WHERE b.lexeme = k.lexeme AND b.block_id = k.block_id AND k.document_ids IS NULL
),
gone AS (
    DELETE FROM medpg.lexical_documents ld USING {src} o WHERE ld.document_id = o.id
    RETURNING ld.dl, ld.dl_title
)
""" + _ADD_STATS.format(src=src, sign="-", lengths="gone")


# hybrid_search's matched lexemes: the result's own block rows for the query's lexemes.
MATCHED_LEXEMES = """ARRAY(SELECT b.lexeme::text
                         FROM medpg.lexical_documents ld
                         JOIN medpg.lexical_blocks b
                           ON b.block_id = ld.block_id AND b.lexeme = ANY (lexemes::text[] COLLATE "C")
                         WHERE ld.document_id = top.doc AND top.doc = ANY (b.document_ids)
                         ORDER BY b.lexeme)"""

_TRIGGERS = {
    "lexical_insert": "AFTER INSERT ON medpg.documents REFERENCING NEW TABLE AS new_docs",
    "lexical_update": "AFTER UPDATE ON medpg.documents REFERENCING OLD TABLE AS old_docs NEW TABLE AS new_docs",
    "lexical_delete": "AFTER DELETE ON medpg.documents REFERENCING OLD TABLE AS old_docs",
    "lexical_truncate": "AFTER TRUNCATE ON medpg.documents",
}


def _drop_triggers_functions_and_views() -> None:
    """What 0004 and this revision both define on top of their postings tables."""
    op.execute("DROP VIEW medpg.lexical_document_frequencies")
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON medpg.documents")
    op.execute("DROP FUNCTION medpg.rebuild_lexical_index()")
    op.execute("DROP FUNCTION medpg.lexical_documents_changed()")


def upgrade() -> None:
    # The per-posting table, its triggers, functions and views go; the stats table, its view
    # lexical_corpus and lexical_exact_terms stay (0004's downgrade would drop them too).
    _drop_triggers_functions_and_views()
    op.execute("DROP TABLE medpg.lexical_postings")
    op.execute("DELETE FROM medpg.lexical_stats")

    op.execute("CREATE SEQUENCE medpg.lexical_block_seq")
    op.execute(
        f"""
        CREATE TABLE medpg.lexical_blocks (
            lexeme       text COLLATE "C" NOT NULL,
            block_id     bigint    NOT NULL,
            document_ids bigint[]  NOT NULL,
            tf           integer[] NOT NULL,
            tf_title     integer[] NOT NULL,
            dl           integer[] NOT NULL,
            dl_title     integer[] NOT NULL,
            CONSTRAINT lexical_blocks_pkey PRIMARY KEY (lexeme, block_id),
            CONSTRAINT lexical_blocks_parallel CHECK (
                cardinality(document_ids) > 0 AND cardinality(document_ids) <= {BLOCK_DOCUMENTS}
                AND cardinality(tf) = cardinality(document_ids)
                AND cardinality(tf_title) = cardinality(document_ids)
                AND cardinality(dl) = cardinality(document_ids)
                AND cardinality(dl_title) = cardinality(document_ids))
        )
        """
    )
    for name in ARRAYS:
        op.execute(f"ALTER TABLE medpg.lexical_blocks ALTER COLUMN {name} SET STORAGE EXTERNAL")
    op.execute(
        "COMMENT ON TABLE medpg.lexical_blocks IS 'BM25 postings of medpg.documents (english configuration), "
        "one row per lexeme and block of documents, parallel arrays ordered by document id; kept by "
        "triggers on medpg.documents; read them through the view medpg.lexical_postings'"
    )
    op.execute(
        """
        CREATE TABLE medpg.lexical_documents (
            document_id bigint  PRIMARY KEY,
            block_id    bigint  NOT NULL,
            dl          integer NOT NULL,
            dl_title    integer NOT NULL
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE medpg.lexical_documents IS 'The lexical block holding each document''s postings, "
        "and its length (title + body, title) in lexeme occurrences'"
    )
    op.execute(
        f"""
        CREATE VIEW medpg.lexical_postings AS
        SELECT b.lexeme, u.document_id, u.tf, u.dl, u.tf_title, u.dl_title
        FROM medpg.lexical_blocks b
        CROSS JOIN LATERAL unnest(b.{", b.".join(ARRAYS)}) u(document_id, tf, tf_title, dl, dl_title)
        """
    )
    op.execute(
        "COMMENT ON VIEW medpg.lexical_postings IS 'One row per (lexeme, document) with term frequencies "
        "and document lengths, unnested from medpg.lexical_blocks; filter on lexeme to read only its rows'"
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
                {_lock(_CHANGED_OLD)};
                {_remove(_CHANGED_OLD)};
                {_add(_CHANGED_NEW)};
            ELSIF TG_OP = 'DELETE' THEN
                {_lock("old_docs")};
                {_remove("old_docs")};
            ELSIF TG_OP = 'TRUNCATE' THEN
                TRUNCATE medpg.lexical_blocks, medpg.lexical_documents;
                DELETE FROM medpg.lexical_stats;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    for name, when in _TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION medpg.lexical_documents_changed()"
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
            TRUNCATE medpg.lexical_blocks, medpg.lexical_documents;
            DELETE FROM medpg.lexical_stats;
            {_add("medpg.documents")};
            -- Fresh statistics, or the planner guesses at tables that just changed completely.
            ANALYZE medpg.lexical_blocks;
            ANALYZE medpg.lexical_documents;
            SELECT coalesce(sum(cardinality(document_ids)), 0) INTO n FROM medpg.lexical_blocks;
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
        SELECT lexeme, sum(cardinality(document_ids)) AS document_frequency
        FROM medpg.lexical_blocks GROUP BY lexeme
        """
    )
    op.execute(_sibling("0005").hybrid_search_sql(MATCHED_LEXEMES, create="CREATE OR REPLACE"))
    op.execute("SELECT medpg.rebuild_lexical_index()")


def downgrade() -> None:
    rev5 = _sibling("0005")
    op.execute(rev5.hybrid_search_sql(rev5.MATCHED_LEXEMES, create="CREATE OR REPLACE"))
    _drop_triggers_functions_and_views()
    op.execute("DROP VIEW medpg.lexical_postings")
    op.execute("DROP TABLE medpg.lexical_documents")
    op.execute("DROP TABLE medpg.lexical_blocks")
    op.execute("DROP SEQUENCE medpg.lexical_block_seq")
    # 0004's objects again, postings recomputed from the documents; its stats table (with the
    # lexical_corpus view) and exact-terms function were kept, so they are dropped first and made
    # anew with the rest.
    op.execute("DROP VIEW medpg.lexical_corpus")
    op.execute("DROP TABLE medpg.lexical_stats")
    op.execute("DROP FUNCTION medpg.lexical_exact_terms(text, text)")
    _REV4.upgrade()
