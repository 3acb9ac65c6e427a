"""Alembic environment for medpg. Run through ``medpg db upgrade`` (medpg.db.migrate)."""

from __future__ import annotations

from alembic import context

from medpg.db.migrate import VERSION_TABLE

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - plain `alembic` CLI use
    raise SystemExit("run migrations with `medpg db upgrade`, which configures the database and models")

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=VERSION_TABLE,
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
