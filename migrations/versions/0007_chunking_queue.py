"""Documents whose chunks must be cut again: the record that lets any writer change text.

Chunking runs in Python (it needs the tokenizer), so a writer that changes a document's text in
plain SQL cannot make its chunks. A trigger (``sql/idempotent/080_chunking.sql``) records such
documents here; ``medpg embed`` and the workers' reconcile cut their chunks again and enqueue them
for embedding. Documents that existed before this revision were chunked by ``medpg ingest``.

Revision ID: 0007
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE medpg.chunking_queue (
            document_id bigint      PRIMARY KEY
                        REFERENCES medpg.documents (id) ON DELETE CASCADE ON UPDATE CASCADE,
            queued_at   timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE medpg.chunking_queue IS 'Documents inserted or changed by a writer that did not "
        "cut their chunks (plain SQL): medpg embed and the workers chunk them again'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE medpg.chunking_queue")
