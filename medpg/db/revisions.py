"""Which schema revision a database is at and which is the newest, without importing Alembic.

Every command checks the schema before it works, and Alembic costs about a quarter of a second to
import; migrating (``medpg.db.migrate``) is the only thing that needs it. The revisions form one
chain (``down_revision`` of each names the one before); tests check that the head found here is
Alembic's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from medpg.errors import DatabaseError

if TYPE_CHECKING:
    from medpg.db.engine import Database

VERSION_TABLE = "medpg_alembic_version"
MIGRATIONS_PACKAGE = "medpg.migrations"

# Alembic keeps the version table in the connection's default schema.
_VERSION_TABLE_EXISTS = "SELECT to_regclass('medpg_alembic_version') IS NOT NULL"
_VERSION = "SELECT version_num FROM medpg_alembic_version"


@contextmanager
def migrations_dir() -> Iterator[Path]:
    """The installed ``migrations/`` directory (a real path, as Alembic needs one)."""
    with as_file(files(MIGRATIONS_PACKAGE)) as path:
        yield Path(path)


def _assignments(source: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
        ):
            values[node.targets[0].id] = node.value.value
    return values


def head_revision() -> str:
    """The newest revision: the one no other revision names as its ``down_revision``."""
    revisions: dict[str, object] = {}
    with migrations_dir() as root:
        for path in (root / "versions").glob("*.py"):
            values = _assignments(path.read_text(encoding="utf-8"))
            if "revision" in values:
                revisions[str(values["revision"])] = values.get("down_revision")
    heads = set(revisions) - {str(down) for down in revisions.values() if down is not None}
    if len(heads) != 1:
        raise DatabaseError(
            f"the migrations have {len(heads)} heads ({', '.join(sorted(heads))}); expected one"
        )
    return heads.pop()


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""
    try:
        with db.connect() as conn:
            exists = conn.execute(_VERSION_TABLE_EXISTS).fetchone()
            if not exists or not exists[0]:
                return None
            row = conn.execute(_VERSION).fetchone()
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot read the schema version: {exc}") from None
    return str(row[0]) if row else None


__all__ = ["MIGRATIONS_PACKAGE", "VERSION_TABLE", "current_revision", "head_revision", "migrations_dir"]
