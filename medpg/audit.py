"""The audit log: who searched or read which documents, written in the same transaction.

Every search and every document read through the API appends one row to ``medpg.audit_log``
in the transaction that read the documents, so a read that is not audited cannot happen (the
row commits with it or neither does). A row holds the time, the key, the tenant, the route, the
ids returned and their patients, and, for a search, an HMAC-SHA256 of the query under the audit
key: equal queries can be matched up (and a known query checked) by whoever holds the key, but
the log never holds query text. The key is MEDPG_AUDIT_KEY, or without it a random key made by
the migration and kept in ``medpg.service_secrets``, which only the owner can read.

``medpg audit`` lists and exports the rows.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TextIO

import orjson
import psycopg

from medpg.config import Settings
from medpg.db.engine import Database

_KEYS: dict[int, bytes] = {}

_RECORD = """
INSERT INTO medpg.audit_log (key_id, tenant_id, route, query_hash, document_ids, patient_ids)
SELECT %(key_id)s, %(tenant)s, %(route)s, %(query_hash)s, %(ids)s::bigint[],
       coalesce(array_agg(DISTINCT d.patient_id ORDER BY d.patient_id)
                FILTER (WHERE d.patient_id IS NOT NULL), '{}')
FROM medpg.documents d
WHERE d.id = ANY (%(ids)s::bigint[])
"""


@dataclass(frozen=True)
class AuditContext:
    """Who is reading, through which route: what one request's audit row is made of."""

    key_id: int | None
    tenant: str
    route: str
    hash_key: bytes = b""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    key_id: int | None
    db_role: str
    tenant: str
    route: str
    query_hash: str | None
    document_ids: tuple[int, ...]
    patient_ids: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        d["document_ids"] = list(self.document_ids)
        d["patient_ids"] = list(self.patient_ids)
        return d


def hash_key(db: Database, settings: Settings | None = None) -> bytes:
    """The HMAC key of query hashes: MEDPG_AUDIT_KEY, or the database's own (read once, as the owner)."""
    settings = settings or db.settings
    if settings.audit_key is not None:
        return settings.audit_key.get_secret_value().encode()
    cached = _KEYS.get(id(db))
    if cached is None:
        with db.connect() as conn:
            row = conn.execute("SELECT secret FROM medpg.service_secrets WHERE name = 'audit_hmac'").fetchone()
            conn.rollback()
        if row is None:
            raise RuntimeError("medpg.service_secrets has no audit_hmac key: run `medpg db upgrade`")
        cached = _KEYS[id(db)] = bytes(row[0])
    return cached


def query_hash(key: bytes, query: str) -> bytes:
    """HMAC-SHA256 of a query, normalised (NFC, surrounding whitespace stripped)."""
    text = unicodedata.normalize("NFC", query).strip()
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def record(
    conn: psycopg.Connection[Any], ctx: AuditContext, *, query: str | None, document_ids: Sequence[int]
) -> None:
    """Append one audit row in ``conn``'s current transaction (the one that read the documents)."""
    conn.execute(
        _RECORD,
        {
            "key_id": ctx.key_id,
            "tenant": ctx.tenant,
            "route": ctx.route,
            "query_hash": query_hash(ctx.hash_key, query) if query is not None else None,
            "ids": list(document_ids),
        },
    )


def list_entries(
    db: Database,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    key_id: int | None = None,
    patient_id: str | None = None,
    limit: int | None = 100,
) -> list[AuditEntry]:
    """Audit rows, newest first, filtered by tenant, time range [since, until), key and patient."""
    return list(iter_entries(db, tenant=tenant, since=since, until=until, key_id=key_id,
                             patient_id=patient_id, limit=limit))


def iter_entries(
    db: Database,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    key_id: int | None = None,
    patient_id: str | None = None,
    limit: int | None = None,
) -> Iterator[AuditEntry]:
    with db.connect() as conn, conn.cursor(name="medpg_audit") as cur:
        cur.execute(
            """
            SELECT id, at, key_id, db_role, tenant_id, route, encode(query_hash, 'hex'), document_ids, patient_ids
            FROM medpg.audit_log
            WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
              AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
              AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
              AND (%(key)s::bigint IS NULL OR key_id = %(key)s)
              AND (%(patient)s::text IS NULL OR patient_ids @> ARRAY[%(patient)s::text])
            ORDER BY at DESC, id DESC
            LIMIT %(limit)s
            """,
            {"tenant": tenant, "since": since, "until": until, "key": key_id, "patient": patient_id,
             "limit": limit},
        )
        for r in cur:
            yield AuditEntry(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7]), tuple(r[8]))
        conn.rollback()


def export(entries: Iterator[AuditEntry], out: TextIO, fmt: str = "jsonl") -> int:
    """Write entries as JSON Lines or CSV; returns how many."""
    n = 0
    if fmt == "jsonl":
        for e in entries:
            out.write(orjson.dumps(e.as_dict()).decode() + "\n")
            n += 1
        return n
    if fmt != "csv":
        raise ValueError("format must be jsonl or csv")
    writer = csv.writer(out)
    writer.writerow(["id", "at", "key_id", "db_role", "tenant", "route", "query_hash", "document_ids",
                     "patient_ids"])
    for e in entries:
        writer.writerow([e.id, e.at.isoformat(), e.key_id or "", e.db_role, e.tenant, e.route,
                         e.query_hash or "", " ".join(map(str, e.document_ids)), " ".join(e.patient_ids)])
        n += 1
    return n


def to_text(entries: Sequence[AuditEntry], fmt: str = "jsonl") -> str:
    buf = io.StringIO()
    export(iter(entries), buf, fmt)
    return buf.getvalue()


__all__ = ["AuditContext", "AuditEntry", "export", "hash_key", "iter_entries", "list_entries", "query_hash",
           "record"]
