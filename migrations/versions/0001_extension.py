"""pgvector extension and the medpg schema.

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("CREATE SCHEMA IF NOT EXISTS medpg")


def downgrade() -> None:
    # The extension is left installed: other schemas in the database may use it.
    op.execute("DROP SCHEMA IF EXISTS medpg CASCADE")
