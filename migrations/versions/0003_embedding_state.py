"""Embedding state: enqueue bookkeeping, failed-chunk lookup and staging vectors for model switches.

- ``chunks.enqueued_at``: when a message for the chunk was last sent to the broker. The periodic
  reconcile skips chunks enqueued less than a lease ago (so a long backlog is not enqueued again
  every minute) unless the queue is empty, which means messages were lost.
- ``chunks_failed_idx``: failed chunks are few; ``medpg status`` lists them without a scan.
- ``medpg.chunk_embeddings_staging``: while the configured article model differs from
  ``embedding_space.model``, workers write the new model's vectors here and search keeps using
  ``chunks.embedding`` (the old model's). When every chunk has a current staging vector, one
  transaction copies them into ``chunks.embedding`` and sets ``embedding_space.model``.

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE medpg.chunks ADD COLUMN enqueued_at timestamptz")
    op.execute("CREATE INDEX chunks_failed_idx ON medpg.chunks (id) WHERE failed_at IS NOT NULL")
    op.execute(
        """
        CREATE TABLE medpg.chunk_embeddings_staging (
            chunk_id      bigint      PRIMARY KEY REFERENCES medpg.chunks (id) ON DELETE CASCADE,
            model         text        NOT NULL,
            embedding     vector      NOT NULL,  -- typed vector(dimension) below
            embedded_hash bytea       NOT NULL,
            embedded_at   timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('ALTER TABLE medpg.chunk_embeddings_staging ALTER COLUMN embedding TYPE vector(%s)',
                           (SELECT dimension FROM medpg.embedding_space));
        END
        $$
        """
    )
    op.execute(
        "COMMENT ON TABLE medpg.chunk_embeddings_staging IS "
        "'Vectors of the next article model while a model switch is in progress; search never reads "
        "them. Swapped into medpg.chunks.embedding in one transaction once complete.'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS medpg.chunk_embeddings_staging")
    op.execute("DROP INDEX IF EXISTS medpg.chunks_failed_idx")
    op.execute("ALTER TABLE medpg.chunks DROP COLUMN IF EXISTS enqueued_at")
