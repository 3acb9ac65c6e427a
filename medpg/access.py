"""Scopes: which tenant, and which of its patients, a caller may see and write.

PostgreSQL enforces a scope, not Python: ``Scope.apply`` switches the current transaction to the
role ``medpg_api`` and records the tenant and patients in transaction-local settings, which the
row-level security policies of ``migrations/sql/idempotent/100_access.sql`` read
(``015_scope.sql``). Everything the transaction runs afterwards (search functions, SELECTs,
counts, writes) sees only the scope's rows. A transaction without a scope runs as the connecting
role, the tables' owner, which sees everything (the CLI, the embedding workers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from medpg.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from medpg.db.engine import Database

DEFAULT_TENANT = "default"
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""A tenant id: letters, digits, '.', '_' and '-', at most 63 characters (the schema checks it too)."""

API_ROLE = "medpg_api"
APP_ROLE = "medpg_app"

_APPLY = """
SELECT set_config('role', %(role)s, true),
       set_config('medpg.tenant', %(tenant)s, true),
       set_config('medpg.patients', coalesce(%(patients)s::text[]::text, '*'), true)
"""


def check_tenant(tenant: str, *, argument: str = "tenant") -> str:
    """``tenant`` if it is a valid tenant id; otherwise an InputError naming ``argument``."""
    if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
        raise InputError(
            f"{argument} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return tenant


def check_patients(patients: Sequence[str] | None, *, argument: str = "patients") -> tuple[str, ...] | None:
    """Patient ids as a tuple (None: every patient), refusing empty or oversized ids."""
    if patients is None:
        return None
    out = tuple(dict.fromkeys(patients))
    if not out:
        raise InputError(f"{argument}: give at least one patient id, or none for every patient of the tenant")
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip() or len(p.encode()) > 1000 or "\x00" in p:
            raise InputError(f"{argument}[{i}] must be a non-empty patient id of at most 1000 bytes")
    return out


@dataclass(frozen=True)
class Scope:
    """A tenant, and the patients of it a caller is bound to (None: every patient of the tenant)."""

    tenant: str
    patients: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        object.__setattr__(self, "patients", check_patients(self.patients))

    def apply(self, conn: psycopg.Connection[Any]) -> None:
        """Run the rest of ``conn``'s current transaction as ``medpg_api`` within this scope.

        Opens a transaction when none is open; the role and settings end with it (SET LOCAL).
        """
        conn.execute(
            _APPLY,
            {
                "role": API_ROLE,
                "tenant": self.tenant,
                "patients": list(self.patients) if self.patients is not None else None,
            },
        )

    def allows_patient(self, patient_id: str | None) -> bool:
        """Whether a document of ``patient_id`` (None: no patient) is within this scope."""
        if self.patients is None:
            return True
        return patient_id is not None and patient_id in self.patients

    def describe(self) -> str:
        """For messages: the tenant and how many patients (never their ids)."""
        if self.patients is None:
            return f"tenant {self.tenant!r}, every patient"
        return f"tenant {self.tenant!r}, {len(self.patients)} patient(s)"


ROLE_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class SqlRole:
    """A database role of a SQL application and the scope medpg.sql_roles gives it."""

    name: str
    scope: Scope


def create_sql_role(
    db: Database, name: str, scope: Scope, *, password: str | None = None, login: bool = True
) -> SqlRole:
    """Create (or re-scope) a role in ``medpg_app`` whose every query sees only ``scope``.

    The role gets no privilege of its own: it reads through medpg_app's grants, under row-level
    security scoped by its row in medpg.sql_roles, which it cannot change.
    """
    if not ROLE_PATTERN.fullmatch(name) or name.startswith("pg_") or name in (API_ROLE, APP_ROLE):
        raise InputError("role name must be 1-63 lower-case letters, digits or '_' (not pg_*, medpg_api, medpg_app)")
    with db.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        options: sql.Composable = sql.SQL("LOGIN" if login else "NOLOGIN")
        if password is not None:
            options = sql.SQL("{} PASSWORD {}").format(options, sql.Literal(password))
        if exists is None:
            conn.execute(sql.SQL("CREATE ROLE {} {} IN ROLE {}").format(
                sql.Identifier(name), options, sql.Identifier(APP_ROLE)))
        else:
            conn.execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(name), options))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_ROLE), sql.Identifier(name)))
        conn.execute(
            "INSERT INTO medpg.sql_roles (role_name, tenant_id, patient_ids) VALUES (%s, %s, %s) "
            "ON CONFLICT (role_name) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, patient_ids = EXCLUDED.patient_ids",
            (name, scope.tenant, list(scope.patients) if scope.patients is not None else None),
        )
        conn.commit()
    return SqlRole(name, scope)


def list_sql_roles(db: Database) -> list[SqlRole]:
    with db.connect() as conn:
        rows = conn.execute("SELECT role_name, tenant_id, patient_ids FROM medpg.sql_roles ORDER BY 1").fetchall()
        conn.rollback()
    return [SqlRole(r[0], Scope(r[1], tuple(r[2]) if r[2] is not None else None)) for r in rows]


def drop_sql_role(db: Database, name: str) -> None:
    """Remove a SQL application's scope and its role (it then sees nothing, and cannot log in)."""
    with db.connect() as conn:
        row = conn.execute("DELETE FROM medpg.sql_roles WHERE role_name = %s RETURNING 1", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no SQL role {name!r} in medpg.sql_roles")
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.commit()


__all__ = [
    "API_ROLE",
    "APP_ROLE",
    "DEFAULT_TENANT",
    "Scope",
    "SqlRole",
    "check_patients",
    "check_tenant",
    "create_sql_role",
    "drop_sql_role",
    "list_sql_roles",
]
