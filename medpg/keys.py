"""API keys: created, listed and revoked by ``medpg keys``; checked by the API on every request.

A token is ``medpg_<prefix>_<secret>``: the prefix (12 hex digits) finds the key's row, and the
row holds only a SHA-256 of the whole token (the token has 256 random bits, so a fast hash is
enough; it is never stored or logged). Each key is bound to one tenant and either to a set of
patients or to every patient of the tenant, and carries scopes in SMART on FHIR's form:

- ``patient/DocumentReference.rs``: read and search (v2 letters c, r, u, d, s in that order;
  v1's ``.read``, ``.write`` and ``.*`` are accepted); ``patient/`` scopes for a key bound to
  patients, ``user/`` or ``system/`` for a tenant-wide key; ``*`` for the resource type works too.
- ``medpg/admin``: manage the tenant's keys through the API.

Permissions the API asks for: read (r), search (s), write (c and u), delete (d), admin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medpg.access import Scope, check_patients, check_tenant
from medpg.db.engine import Database
from medpg.errors import AuthenticationError, InputError, NotFoundError, PermissionDeniedError

PERMISSIONS = ("read", "search", "write", "delete", "admin")
ADMIN_SCOPE = "medpg/admin"
_SCOPE = re.compile(r"(patient|user|system)/(DocumentReference|\*)\.(c?r?u?d?s?|read|write|\*)")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_NEEDS = {"read": "r", "search": "s", "write": "cu", "delete": "d"}
_TOKEN = re.compile(r"medpg_([0-9a-f]{12})_[A-Za-z0-9_-]{20,100}")

_COLUMNS = "id, name, tenant_id, patient_ids, scopes, created_at, revoked_at, last_used_at"


@dataclass(frozen=True)
class ApiKey:
    """A key as stored (never its token)."""

    id: int
    name: str
    tenant: str
    patients: tuple[str, ...] | None
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None

    @property
    def scope(self) -> Scope:
        return Scope(self.tenant, self.patients)

    def allows(self, permission: str) -> bool:
        """Whether one of the key's scopes grants ``permission`` (one of PERMISSIONS)."""
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        if permission == "admin":
            return ADMIN_SCOPE in self.scopes
        granted = set("".join(_letters(s) for s in self.scopes))
        return set(_NEEDS[permission]) <= granted

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "patients": list(self.patients) if self.patients is not None else None,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


def _letters(scope: str) -> str:
    m = _SCOPE.fullmatch(scope)
    if m is None:
        return ""
    perms = m.group(3)
    return _V1.get(perms, perms)


def check_scopes(scopes: Sequence[str], *, patient_bound: bool) -> tuple[str, ...]:
    """The scopes, each valid for a key bound (or not) to patients; InputError naming a bad one."""
    out = tuple(dict.fromkeys(s.strip() for s in scopes))
    if not out:
        raise InputError("give at least one scope, e.g. patient/DocumentReference.rs")
    for s in out:
        if s == ADMIN_SCOPE:
            if patient_bound:  # an admin creates keys for the whole tenant: it cannot be bound to patients
                raise InputError(f"scope {s!r}: a key bound to patients cannot administer its tenant's keys")
            continue
        m = _SCOPE.fullmatch(s)
        if m is None or not _letters(s):
            raise InputError(
                f"scope {s!r} is not a SMART scope medpg knows: use <patient|user|system>/DocumentReference."
                "<cruds letters> (or .read / .write / .*), or medpg/admin"
            )
        if patient_bound and m.group(1) != "patient":
            raise InputError(f"scope {s!r}: a key bound to patients takes patient/ scopes only")
        if not patient_bound and m.group(1) == "patient":
            raise InputError(
                f"scope {s!r}: patient/ scopes need the key bound to patients (--patient); "
                "use user/ or system/ for a tenant-wide key"
            )
    return out


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _key(row: Sequence[Any]) -> ApiKey:
    id_, name, tenant, patients, scopes, created, revoked, used = row
    return ApiKey(
        int(id_), name, tenant, tuple(patients) if patients is not None else None, tuple(scopes),
        created, revoked, used,
    )


def create_key(
    db: Database,
    *,
    name: str,
    tenant: str,
    patients: Sequence[str] | None,
    scopes: Sequence[str],
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and its token (shown once: only its hash is stored)."""
    check_tenant(tenant)
    bound = check_patients(patients, argument="patient")
    checked = check_scopes(scopes, patient_bound=bound is not None)
    if not name.strip() or len(name) > 200:
        raise InputError("name must be 1-200 characters")
    prefix = secrets.token_hex(6)
    token = f"medpg_{prefix}_{secrets.token_urlsafe(32)}"
    with db.connect() as conn:
        row = conn.execute(
            f"INSERT INTO medpg.api_keys (prefix, secret_hash, name, tenant_id, patient_ids, scopes) "
            f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (prefix, _hash(token), name, tenant, list(bound) if bound else None, list(checked)),
        ).fetchone()
        conn.commit()
    assert row is not None
    return _key(row), token


def list_keys(db: Database, *, tenant: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
    """Keys, oldest first; of one tenant, and without revoked ones unless asked."""
    with db.connect() as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM medpg.api_keys "
            "WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s) "
            "AND (%(revoked)s OR revoked_at IS NULL) ORDER BY id",
            {"tenant": tenant, "revoked": include_revoked},
        ).fetchall()
        conn.rollback()
    return [_key(r) for r in rows]


def revoke_key(db: Database, key_id: int, *, tenant: str | None = None) -> ApiKey:
    """Revoke a key now (a revoked key stays listed for the audit log); NotFoundError if none."""
    with db.connect() as conn:
        row = conn.execute(
            f"UPDATE medpg.api_keys SET revoked_at = coalesce(revoked_at, now()) "
            f"WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s) RETURNING {_COLUMNS}",
            {"id": key_id, "tenant": tenant},
        ).fetchone()
        conn.commit()
    if row is None:
        raise NotFoundError(f"no API key with id {key_id}" + (f" in tenant {tenant!r}" if tenant else ""))
    return _key(row)


def authenticate(db: Database, token: str | None) -> ApiKey:
    """The live key a token belongs to; AuthenticationError when there is none, it is unknown or revoked.

    The messages say which of those it is, never the token.
    """
    if not token:
        raise AuthenticationError("an API key is required: send 'Authorization: Bearer <key>'")
    m = _TOKEN.fullmatch(token.strip())
    if m is None:
        raise AuthenticationError("the API key is not a medpg key (medpg_<prefix>_<secret>)")
    with db.connect() as conn:
        row = conn.execute(
            f"SELECT secret_hash, {_COLUMNS} FROM medpg.api_keys WHERE prefix = %s", (m.group(1),)
        ).fetchone()
        conn.rollback()
    if row is None or not hmac.compare_digest(bytes(row[0]), _hash(token.strip())):
        raise AuthenticationError("unknown API key")
    key = _key(row[1:])
    if key.revoked_at is not None:
        raise AuthenticationError("this API key was revoked")
    return key


def require(key: ApiKey, permission: str) -> None:
    """PermissionDeniedError unless ``key`` has a scope granting ``permission``."""
    if not key.allows(permission):
        wanted = ADMIN_SCOPE if permission == "admin" else f"DocumentReference '{_NEEDS[permission]}'"
        raise PermissionDeniedError(f"this API key's scopes do not allow {permission} (needs {wanted})")


__all__ = [
    "ADMIN_SCOPE",
    "PERMISSIONS",
    "ApiKey",
    "authenticate",
    "check_scopes",
    "create_key",
    "list_keys",
    "require",
    "revoke_key",
]
