"""Search functions (no tables).

This revision once created the search functions. Functions, views and triggers are now defined
in ``migrations/sql/idempotent/`` and applied by every upgrade, so it changes no table; it stays
so that databases at 0005 or 0006 keep a valid history.

Revision ID: 0005
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
