"""`medpg keys`, `medpg roles` and `medpg audit`: who may see what, and who saw what."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import typer

from medpg.cli.common import Command, Group, console, database, handle_errors
from medpg.errors import InputError

keys_app = typer.Typer(cls=Group, help="API keys of `medpg serve`: create, list, revoke.", no_args_is_help=True)
roles_app = typer.Typer(
    cls=Group, help="Database roles of SQL applications, scoped by row-level security.", no_args_is_help=True
)
audit_app = typer.Typer(cls=Group, help="The audit log of searches and document reads.", no_args_is_help=True)


def _patients(values: list[str] | None) -> list[str] | None:
    return values or None


@keys_app.command("create", cls=Command)
@handle_errors
def keys_create(
    name: str = typer.Option(..., "--name", help="What the key is for (shown in listings)."),
    tenant: str = typer.Option("default", "--tenant", help="The tenant the key reads and writes."),
    patient: list[str] | None = typer.Option(  # noqa: B008
        None, "--patient", metavar="ID", help="Bind the key to this patient (repeat for several); none: all."
    ),
    scope: list[str] | None = typer.Option(  # noqa: B008
        None,
        "--scope",
        metavar="SCOPE",
        help="SMART scope, e.g. patient/DocumentReference.rs, system/DocumentReference.cruds, medpg/admin "
        "(repeatable; default: read and search).",
    ),
) -> None:
    """Create an API key and print its token once (only a hash of it is stored)."""
    from medpg import keys

    patients = _patients(patient)
    scopes = scope or [("patient" if patients else "system") + "/DocumentReference.rs"]
    key, token = keys.create_key(database(), name=name, tenant=tenant, patients=patients, scopes=scopes)
    console.print(
        f"key {key.id} ({key.name}) for {key.scope.describe()}, scopes {' '.join(key.scopes)}", highlight=False
    )
    console.print("token (shown once; send it as 'Authorization: Bearer <token>'):", highlight=False)
    print(token)


@keys_app.command("list", cls=Command)
@handle_errors
def keys_list(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's keys."),
    revoked: bool = typer.Option(False, "--revoked", help="Include revoked keys."),
) -> None:
    """List keys (never their tokens)."""
    from rich.table import Table

    from medpg import keys

    table = Table("id", "name", "tenant", "patients", "scopes", "created", "revoked", box=None)
    for k in keys.list_keys(database(), tenant=tenant, include_revoked=revoked):
        table.add_row(
            str(k.id), k.name, k.tenant, "all" if k.patients is None else str(len(k.patients)),
            " ".join(k.scopes), f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke", cls=Command)
@handle_errors
def keys_revoke(key_id: int = typer.Argument(..., help="The key's id (medpg keys list).")) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from medpg import keys

    key = keys.revoke_key(database(), key_id)
    console.print(f"key {key.id} ({key.name}) revoked", highlight=False)


@roles_app.command("create", cls=Command)
@handle_errors
def roles_create(
    name: str = typer.Argument(..., help="The database role (created if missing, in medpg_app)."),
    tenant: str = typer.Option("default", "--tenant", help="The tenant it may read."),
    patient: list[str] | None = typer.Option(  # noqa: B008
        None, "--patient", metavar="ID", help="Only this patient (repeatable); none: every patient."
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Set the role's password from the first line of standard input."
    ),
    nologin: bool = typer.Option(False, "--nologin", help="A group role instead of a login role."),
) -> None:
    """Create a SQL application's role: it reads medpg's tables and calls the search functions,
    seeing only its scope (PostgreSQL row-level security)."""
    from medpg.access import Scope, create_sql_role

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InputError("--password-stdin: standard input holds no password")
    role = create_sql_role(
        database(), name, Scope(tenant, tuple(patient) if patient else None), password=password, login=not nologin
    )
    console.print(f"role {role.name}: {role.scope.describe()} (member of medpg_app)", highlight=False)


@roles_app.command("list", cls=Command)
@handle_errors
def roles_list() -> None:
    """SQL applications' roles and their scopes."""
    from medpg.access import list_sql_roles

    for role in list_sql_roles(database()):
        console.print(f"{role.name}: {role.scope.describe()}", highlight=False)


@roles_app.command("drop", cls=Command)
@handle_errors
def roles_drop(name: str = typer.Argument(..., help="The role.")) -> None:
    """Drop a SQL application's role and its scope."""
    from medpg.access import drop_sql_role

    drop_sql_role(database(), name)
    console.print(f"role {name} dropped", highlight=False)


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option} must be an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T08:00") from None


@audit_app.command("list", cls=Command)
@handle_errors
def audit_list(
    tenant: str | None = typer.Option(None, "--tenant"),
    since: str | None = typer.Option(None, "--since", metavar="WHEN", help="From this time (ISO 8601)."),
    until: str | None = typer.Option(None, "--until", metavar="WHEN", help="Before this time."),
    key: int | None = typer.Option(None, "--key", metavar="ID", help="Only this key's requests."),
    patient: str | None = typer.Option(None, "--patient", metavar="ID", help="Only rows touching this patient."),
    limit: int = typer.Option(50, "--limit", min=1, max=100_000),
) -> None:
    """The newest audit rows: time, key, tenant, route, query hash, documents and patients."""
    from rich.table import Table

    from medpg import audit

    table = Table("at", "key", "tenant", "route", "query hash", "documents", "patients", box=None)
    for e in audit.list_entries(
        database(), tenant=tenant, since=_when(since, "--since"), until=_when(until, "--until"), key_id=key,
        patient_id=patient, limit=limit,
    ):
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}", str(e.key_id or ""), e.tenant, e.route, (e.query_hash or "")[:16],
            str(len(e.document_ids)), str(len(e.patient_ids)),
        )
    console.print(table)


@audit_app.command("export", cls=Command)
@handle_errors
def audit_export(
    out: Path | None = typer.Option(None, "--out", help="File to write (default: standard output)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    tenant: str | None = typer.Option(None, "--tenant"),
    since: str | None = typer.Option(None, "--since", metavar="WHEN"),
    until: str | None = typer.Option(None, "--until", metavar="WHEN"),
    patient: str | None = typer.Option(None, "--patient", metavar="ID"),
) -> None:
    """Every matching audit row, newest first, as JSON Lines or CSV."""
    from medpg import audit

    if fmt not in ("jsonl", "csv"):
        raise InputError("--format must be jsonl or csv")
    entries = audit.iter_entries(
        database(), tenant=tenant, since=_when(since, "--since"), until=_when(until, "--until"), patient_id=patient
    )
    if out is None:
        n = audit.export(entries, sys.stdout, fmt)
    else:
        with out.open("w", encoding="utf-8", newline="") as fh:
            n = audit.export(entries, fh, fmt)
        console.print(f"{n} audit rows written to {out}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys", cls=Group)
    app.add_typer(roles_app, name="roles", cls=Group)
    app.add_typer(audit_app, name="audit", cls=Group)
