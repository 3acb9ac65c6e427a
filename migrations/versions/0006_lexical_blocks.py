"""BM25 postings grouped in blocks: one row per (lexeme, block of documents), not one per posting.

A first load of 100k NFCorpus abstracts spent most of its server time writing ~10M posting rows (a
heap tuple and a btree entry each). Every write statement on ``medpg.documents`` now cuts its
documents into blocks of at most 1,000 and writes one row per distinct lexeme of each block, with
parallel arrays ordered by document id (``migrations/sql/idempotent/020_lexical_index.sql``).

- ``medpg.lexical_blocks``: (lexeme, block_id) -> document_ids[], tf[], tf_title[], dl[], dl_title[].
- ``medpg.lexical_documents``: the block holding each document's postings, and its lengths.
- ``medpg.lexical_postings`` becomes a view with the old table's columns.

Existing postings are regrouped (documents in id order, 1,000 to a block); the downgrade
unnests the blocks back into one row per posting. Statistics are unchanged either way.

Revision ID: 0006
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE medpg.lexical_block_seq")
    op.execute(
        """
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
                cardinality(document_ids) > 0 AND cardinality(document_ids) <= 1000
                AND cardinality(tf) = cardinality(document_ids)
                AND cardinality(tf_title) = cardinality(document_ids)
                AND cardinality(dl) = cardinality(document_ids)
                AND cardinality(dl_title) = cardinality(document_ids))
        )
        """
    )
    # The arrays are stored without compression (EXTERNAL: out of line when large, never compressed).
    op.execute(
        """
        ALTER TABLE medpg.lexical_blocks
            ALTER COLUMN document_ids SET STORAGE EXTERNAL,
            ALTER COLUMN tf SET STORAGE EXTERNAL,
            ALTER COLUMN tf_title SET STORAGE EXTERNAL,
            ALTER COLUMN dl SET STORAGE EXTERNAL,
            ALTER COLUMN dl_title SET STORAGE EXTERNAL
        """
    )
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
    # Existing postings, regrouped: documents in id order, 1,000 to a block.
    op.execute(
        """
        INSERT INTO medpg.lexical_documents (document_id, block_id, dl, dl_title)
        SELECT d.document_id, (row_number() OVER (ORDER BY d.document_id) - 1) / 1000 + 1, d.dl, d.dl_title
        FROM (SELECT DISTINCT document_id, dl, dl_title FROM medpg.lexical_postings) d
        """
    )
    op.execute(
        "SELECT setval('medpg.lexical_block_seq', greatest((SELECT max(block_id) FROM medpg.lexical_documents), 1), "
        "(SELECT max(block_id) IS NOT NULL FROM medpg.lexical_documents))"
    )
    op.execute(
        """
        INSERT INTO medpg.lexical_blocks (lexeme, block_id, document_ids, tf, tf_title, dl, dl_title)
        SELECT p.lexeme, ld.block_id,
               array_agg(p.document_id ORDER BY p.document_id), array_agg(p.tf ORDER BY p.document_id),
               array_agg(p.tf_title ORDER BY p.document_id), array_agg(p.dl ORDER BY p.document_id),
               array_agg(p.dl_title ORDER BY p.document_id)
        FROM medpg.lexical_postings p JOIN medpg.lexical_documents ld ON ld.document_id = p.document_id
        GROUP BY p.lexeme, ld.block_id
        """
    )
    # A database migrated by an older medpg still has this view on the table.
    op.execute("DROP VIEW IF EXISTS medpg.lexical_document_frequencies")
    op.execute("DROP TABLE medpg.lexical_postings")


def downgrade() -> None:
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
        """
        INSERT INTO medpg.lexical_postings (document_id, tf, dl, tf_title, dl_title, lexeme)
        SELECT u.document_id, u.tf, u.dl, u.tf_title, u.dl_title, b.lexeme
        FROM medpg.lexical_blocks b
        CROSS JOIN LATERAL unnest(b.document_ids, b.tf, b.tf_title, b.dl, b.dl_title)
            AS u(document_id, tf, tf_title, dl, dl_title)
        """
    )
    op.execute("DROP TABLE medpg.lexical_documents")
    op.execute("DROP TABLE medpg.lexical_blocks")
    op.execute("DROP SEQUENCE medpg.lexical_block_seq")
