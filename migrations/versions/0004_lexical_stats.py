"""BM25 postings (one row per lexeme and document) and corpus statistics.

- ``medpg.lexical_postings``: (lexeme, document) -> tf, dl and their title shares. Revision 0006
  replaces it with blocks of documents.
- ``medpg.lexical_stats``: document count and total lengths, split over 16 slots chosen by backend
  so concurrent writers rarely update the same row; search sums the slots.

The triggers that keep them current and the functions that read them are not revisions: they are
defined in ``migrations/sql/idempotent/`` and applied by every upgrade.

Revision ID: 0004
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


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


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS medpg.lexical_stats")
    op.execute("DROP TABLE IF EXISTS medpg.lexical_postings")
