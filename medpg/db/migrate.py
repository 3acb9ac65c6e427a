"""Run medpg's Alembic migrations against a Database.

The revisions live in ``medpg/migrations`` (inside the package, so an installed medpg can
migrate). The vector dimension and operator class come from the configured model profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

from medpg.errors import DatabaseError

if TYPE_CHECKING:
    from medpg.db.engine import Database

VERSION_TABLE = "medpg_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _config(db: Database) -> Config:
    from medpg.encoders.profiles import resolve_profile

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    profile = resolve_profile(db.settings)
    cfg.attributes["embedding_space"] = {"dimension": profile.dimension, "similarity": profile.similarity}
    return cfg


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def _run(db: Database, fn: str, revision: str) -> None:
    cfg = _config(db)
    try:
        with db.begin() as conn:
            # Serialise concurrent `medpg db upgrade` runs (several workers starting at once).
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('medpg.migrations'))")
            if fn == "upgrade":
                _require_pgvector(conn)
            cfg.attributes["connection"] = conn
            getattr(command, fn)(cfg, revision)
    except DBAPIError as exc:
        raise DatabaseError(f"migration {fn} to {revision!r} failed: {_orig(exc)}") from None
    # Pooled connections opened before the extension existed have no pgvector types registered:
    # drop them so every later connection registers on connect.
    db.dispose()


def _orig(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def _require_pgvector(conn: object) -> None:
    row = conn.exec_driver_sql(  # type: ignore[attr-defined]
        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    if row is None:
        raise DatabaseError(
            "the pgvector extension is not installed on this PostgreSQL server: install it "
            "(https://github.com/pgvector/pgvector#installation, or the pgvector/pgvector Docker image) "
            "or unset MEDPG_DATABASE_URL to use medpg's embedded PostgreSQL"
        )


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (default: the newest)."""
    _run(db, "upgrade", revision)


def downgrade(db: Database, revision: str = "base") -> None:
    """Take the schema down to ``revision`` (default: remove medpg's schema entirely)."""
    _run(db, "downgrade", revision)


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""
    try:
        with db.begin() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()
    except DBAPIError as exc:
        raise DatabaseError(f"cannot read the schema version: {_orig(exc)}") from None


__all__ = ["VERSION_TABLE", "current_revision", "downgrade", "head_revision", "upgrade"]
