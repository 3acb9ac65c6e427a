"""Run medpg's migrations against a Database: Alembic revisions, then the SQL definitions.

The schema lives in ``migrations/`` at the top of the repository, installed as the package
``medpg.migrations``:

- ``versions/NNNN_*.py``: Alembic revisions, for tables and data only. A released revision never
  changes: ``frozen.txt`` lists the SHA-256 of each, and ``upgrade`` refuses to run when a file
  differs (``verify_frozen``).
- ``sql/idempotent/NNN_*.sql``: the current definition of every function, view and trigger
  (``CREATE OR REPLACE``), applied in file order after the revisions by every upgrade to head.
- ``sql/teardown.sql``: removes those definitions before a downgrade changes tables under them.

The vector space (dimension, similarity) is needed once, when revision 0002 creates the tables;
the caller passes it in (``medpg.schema.upgrade`` takes it from the configured model profile).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from medpg.db.revisions import (
    MIGRATIONS_PACKAGE,
    VERSION_TABLE,
    current_revision,
    head_revision,
    migrations_dir,
)
from medpg.db.schema import EmbeddingSpace
from medpg.errors import ConfigError, DatabaseError, DatabaseUnavailableError, SchemaError, is_transient

if TYPE_CHECKING:
    from medpg.db.engine import Database


def idempotent_files(root: Path) -> list[Path]:
    """The SQL definition files, in the order they are applied."""
    return sorted((root / "sql" / "idempotent").glob("*.sql"))


def _frozen(root: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in (root / "frozen.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            entries[name] = digest
    return entries


def verify_frozen(root: Path) -> None:
    """Refuse released revisions that changed: each file listed in ``frozen.txt`` keeps its hash.

    A schema change is a new revision (and an edit of the idempotent SQL files), never an edit of
    a released one: databases already past it would not see the change.
    """
    changed = []
    for name, digest in sorted(_frozen(root).items()):
        path = root / name
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
        if actual != digest:
            changed.append(name)
    if changed:
        raise SchemaError(
            f"released migration(s) {', '.join(changed)} differ from {root / 'frozen.txt'}: a released "
            "revision must not change; add a new revision instead"
        )


def _config(root: Path, space: EmbeddingSpace | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(root))
    if space is not None:
        cfg.attributes["embedding_space"] = {"dimension": space.dimension, "similarity": space.similarity}
    return cfg


def _orig(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def _require_pgvector(conn: Connection) -> None:
    row = conn.exec_driver_sql(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    if row is None:
        raise DatabaseError(
            "the pgvector extension is not installed on this PostgreSQL server: install it "
            "(https://github.com/pgvector/pgvector#installation, or the pgvector/pgvector Docker image) "
            "or unset MEDPG_DATABASE_URL to use medpg's embedded PostgreSQL"
        )


def _execute_file(conn: Connection, path: Path) -> None:
    """Run one SQL file as it is: no parameters, so ``%`` (modulo) needs no escaping."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        driver.execute(path.read_text(encoding="utf-8").encode())
    except psycopg.Error as exc:
        raise SchemaError(f"{path.name} failed: {str(exc).strip().splitlines()[0]}") from None


def _needs_space(conn: Connection) -> bool:
    """True until revision 0002 has stored the embedding space."""
    return conn.exec_driver_sql("SELECT to_regclass('medpg.embedding_space') IS NULL").scalar() is True


@contextmanager
def _migration(db: Database) -> Iterator[Connection]:
    """One transaction, serialised against concurrent `medpg db upgrade` runs (workers starting at once)."""
    try:
        with db.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('medpg.migrations'))")
            yield conn
    except DBAPIError as exc:
        # The server went away (transient: try again) or a statement failed (the schema's problem).
        cls = DatabaseUnavailableError if is_transient(exc) else SchemaError
        raise cls(f"migration failed: {_orig(exc)}") from None
    # Pooled connections opened before the extension existed have no pgvector types registered:
    # drop them so every later connection registers on connect.
    db.dispose()


def upgrade(db: Database, revision: str = "head", space: EmbeddingSpace | None = None) -> None:
    """Bring the tables up to ``revision`` and, at head, (re)apply every SQL definition.

    ``space`` is required when the schema does not exist yet (revision 0002 creates the vector
    column and its index from it); afterwards the database's own ``medpg.embedding_space`` rules.
    """
    with migrations_dir() as root, _migration(db) as conn:
        verify_frozen(root)
        _require_pgvector(conn)
        if space is None and _needs_space(conn) and revision != "0001":
            raise ConfigError(
                "creating medpg's tables needs the vector dimension and similarity: run `medpg db upgrade`, "
                "which takes them from the configured model profile"
            )
        cfg = _config(root, space)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if _current(conn) == head_revision():
            for path in idempotent_files(root):
                _execute_file(conn, path)


def downgrade(db: Database, revision: str = "base") -> None:
    """Take the tables down to ``revision`` (default: remove medpg's schema entirely).

    The SQL definitions are removed first; below head a database has tables only, and the next
    ``upgrade`` brings everything back.
    """
    with migrations_dir() as root, _migration(db) as conn:
        if conn.exec_driver_sql("SELECT to_regnamespace('medpg') IS NOT NULL").scalar():
            _execute_file(conn, root / "sql" / "teardown.sql")
        cfg = _config(root, None)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _current(conn: Connection) -> str | None:
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


__all__ = [
    "MIGRATIONS_PACKAGE",
    "VERSION_TABLE",
    "current_revision",
    "downgrade",
    "head_revision",
    "idempotent_files",
    "migrations_dir",
    "upgrade",
    "verify_frozen",
]
