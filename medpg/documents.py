"""Documents one at a time or in request-sized batches: what the API reads and writes.

Writes go through the ingest writer (``medpg.ingest.writer``): the same validation, the same
idempotent upsert and chunking as ``medpg ingest``. With a ``Scope`` every statement runs under
row-level security (``medpg.access``): a document outside the scope is invisible to reads, counts
and deletes, and PostgreSQL refuses to write one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from medpg import audit as audit_log
from medpg.access import DEFAULT_TENANT, Scope
from medpg.audit import AuditContext
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import InputError, NotFoundError, PermissionDeniedError
from medpg.ingest.readers import RawRow
from medpg.ingest.validation import Limits, Record, validate_row
from medpg.ingest.writer import BatchFailed, BatchResult, DocumentWriter
from medpg.retrieval import arguments
from medpg.retrieval.types import Filters

MAX_BATCH = 1000
"""Documents one API request may write."""

_KEYS = {k: k for k in ("text", "title", "patient_id", "date")}

#: Containers a document's metadata may nest: orjson, which hashes and stores it, refuses more
#: than 254 levels, and the content hash puts the metadata one level down.
MAX_STORED_METADATA_DEPTH = 250
_INT64 = (-(2**63), 2**64 - 1)  # what orjson writes: signed and unsigned 64-bit integers

_SELECT = """
SELECT d.id, d.tenant_id, d.source, d.external_id, d.title, d.body, d.metadata, d.patient_id,
       d.document_date, d.created_at, d.updated_at,
       (SELECT count(*) FROM medpg.chunks c WHERE c.document_id = d.id),
       (SELECT count(*) FROM medpg.chunks c
        JOIN medpg.embedding_space e ON c.embedding_model = e.model
        WHERE c.document_id = d.id AND c.embedding IS NOT NULL AND c.embedded_hash = c.content_hash)
FROM medpg.documents d
"""


@dataclass(frozen=True)
class StoredDocument:
    id: int
    tenant: str
    source: str
    external_id: str
    title: str
    body: str
    metadata: dict[str, Any]
    patient_id: str | None
    document_date: datetime | None
    created_at: datetime
    updated_at: datetime
    chunks: int
    embedded_chunks: int

    def as_dict(self, *, text: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.external_id,
            "source": self.source,
            "tenant": self.tenant,
            "title": self.title,
            "metadata": self.metadata,
            "patient_id": self.patient_id,
            "date": self.document_date.isoformat() if self.document_date else None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "chunks": self.chunks,
            "embedded_chunks": self.embedded_chunks,
        }
        if text:
            out["text"] = self.body
        return out


def _stored(r: Sequence[Any]) -> StoredDocument:
    return StoredDocument(
        int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6] or {}, r[7], r[8], r[9], r[10], int(r[11]), int(r[12])
    )


def validate_documents(settings: Settings, source: str, rows: Sequence[Any]) -> list[Record]:
    """The rows as Records, by the rules of ``medpg ingest``; one InputError naming every bad row.

    A row is ``{"id", "text", "title", "metadata", "patient_id", "date"}`` (``_id`` also accepted);
    messages name ``documents[i]`` and the field, never the values.
    """
    if not rows:
        raise InputError("documents: give at least one document")
    if len(rows) > MAX_BATCH:
        raise InputError(f"documents: at most {MAX_BATCH} documents per request, got {len(rows)}")
    limits = Limits.for_source(settings, source)
    where = Path("documents")
    records: list[Record] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, obj in enumerate(rows):
        problem = _not_json(obj)
        if problem is not None:
            errors.append(f"documents[{i}]: {problem}")
            continue
        id_key = "_id" if isinstance(obj, Mapping) and "_id" in obj and "id" not in obj else "id"
        item = validate_row(where, i, RawRow(obj, id_key, _KEYS), limits)
        if isinstance(item, Record):
            first = seen.setdefault(item.external_id, i)
            if first != i:
                errors.append(f"documents[{i}]: duplicate id (first at documents[{first}])")
                continue
            records.append(item)
        else:
            errors.append(f"documents[{i}]: {item.message}")
    if errors:
        shown = "; ".join(errors[:20]) + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise InputError(f"{len(errors)} invalid document(s), nothing written: {shown}")
    return records


def _not_json(row: Any) -> str | None:
    """Why a row holds what ``medpg ingest``'s JSON reader (orjson) never yields, or None.

    The API's JSON decoder (Python's) also lets through lone surrogates (``"\\ud800"``), which
    PostgreSQL cannot store, and in metadata NaN and Infinity, integers past 64 bits and deep
    nesting, which orjson cannot write (NaN it would write as null). A numeric id or patient id
    is its decimal string, whatever its size. The message names the field, never the value.
    """
    if not isinstance(row, Mapping):
        return None  # validate_row names what is wrong with it
    for key, value in row.items():
        problem = _json_value_problem(value, 1, stored_as_json=key == "metadata")
        if problem is not None:
            return f"field {str(key)!r} {problem}"
    return None


def _json_value_problem(value: Any, depth: int, *, stored_as_json: bool) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (not valid Unicode)"
        return None
    if not stored_as_json or value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if _INT64[0] <= value <= _INT64[1] else "holds an integer outside the 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else "holds NaN or an infinite number (JSON has neither)"
    if isinstance(value, Mapping | list):
        if depth > MAX_STORED_METADATA_DEPTH:
            return f"is nested deeper than {MAX_STORED_METADATA_DEPTH} levels"
        # a list's items have no key (None, which passes)
        pairs = value.items() if isinstance(value, Mapping) else ((None, item) for item in value)
        for key, item in pairs:
            problem = _json_value_problem(key, depth, stored_as_json=True) or _json_value_problem(
                item, depth + 1, stored_as_json=True
            )
            if problem is not None:
                return problem
    return None


def upsert_documents(
    db: Database, settings: Settings, *, source: str, records: Sequence[Record], scope: Scope
) -> BatchResult:
    """Upsert ``records`` into the scope's tenant in one transaction, under row-level security.

    A patient-bound scope may write only its patients' documents: PermissionDeniedError, with
    nothing written, for a record of another patient (or of none), or one whose id is taken by a
    document the scope cannot see.
    """
    for r in records:
        if not scope.allows_patient(r.patient_id):
            raise PermissionDeniedError(
                f"documents[{r.line}]: this key may only write documents of its own patients"
                + (" (the document has no patient_id)" if r.patient_id is None else "")
            )
    writer = DocumentWriter(db, settings, source, file="documents", scope=scope)
    try:
        return writer.write(list(records))
    except BatchFailed as failed:
        if isinstance(failed.cause, psycopg.errors.InsufficientPrivilege):
            raise PermissionDeniedError(
                "a document id in this batch belongs to a document this key cannot see; nothing was written"
            ) from None
        detail = "; ".join(str(e) for e in failed.refused[:5]) or type(failed.cause).__name__
        raise InputError(f"PostgreSQL refused the batch, nothing was written: {detail}") from None


def _check_key(source: str, external_id: str) -> None:
    """InputError for a source or id PostgreSQL text cannot hold (NUL, a lone surrogate): a URL
    can carry ``%00``, and no stored document has one."""
    arguments.text_value(source, "source")
    arguments.text_value(external_id, "the document id")


def _scoped(conn: psycopg.Connection[Any], scope: Scope | None) -> None:
    if scope is not None:
        scope.apply(conn)


def get_document(
    db: Database,
    *,
    source: str,
    external_id: str,
    scope: Scope | None,
    audit: AuditContext | None = None,
    tenant: str | None = None,
) -> StoredDocument:
    """One document by source and id (within the scope); NotFoundError if there is none it can see.

    With ``audit``, the read is recorded in the same transaction. ``tenant`` (no scope): which
    tenant's document; default 'default'.
    """
    _check_key(source, external_id)
    with db.connect() as conn:
        _scoped(conn, scope)
        row = conn.execute(
            _SELECT + " WHERE d.tenant_id = %s AND d.source = %s AND d.external_id = %s",
            (scope.tenant if scope else (tenant or DEFAULT_TENANT), source, external_id),
        ).fetchone()
        if row is None:
            conn.rollback()
            raise NotFoundError(f"no document with this id in source {source!r}")
        doc = _stored(row)
        if audit is not None:
            audit_log.record(conn, audit, query=None, document_ids=[doc.id])
            conn.commit()
        else:
            conn.rollback()
    return doc


def delete_document(db: Database, *, source: str, external_id: str, scope: Scope | None) -> None:
    """Delete one document (its chunks and postings go with it); NotFoundError if the scope sees none."""
    _check_key(source, external_id)
    with db.connect() as conn:
        _scoped(conn, scope)
        row = conn.execute(
            "DELETE FROM medpg.documents WHERE tenant_id = %s AND source = %s AND external_id = %s RETURNING id",
            (scope.tenant if scope else DEFAULT_TENANT, source, external_id),
        ).fetchone()
        if row is None:
            conn.rollback()
            raise NotFoundError(f"no document with this id in source {source!r}")
        conn.commit()


def find_documents(
    db: Database,
    *,
    scope: Scope | None,
    filters: Filters,
    limit: int = 10,
    offset: int = 0,
    audit: AuditContext | None = None,
) -> list[StoredDocument]:
    """Documents passing ``filters`` (medpg.document_matches, as search applies them), newest first."""
    if not 1 <= limit <= 1000 or offset < 0:
        raise InputError("limit must be 1-1000 and offset at least 0")
    f = filters
    with db.connect() as conn:
        _scoped(conn, scope)
        rows = conn.execute(
            _SELECT
            + " WHERE medpg.document_matches(d, %(sources)s, %(metadata)s, %(date_from)s, %(date_to)s, %(patients)s)"
            " ORDER BY d.document_date DESC NULLS LAST, d.id DESC LIMIT %(limit)s OFFSET %(offset)s",
            {
                "sources": list(f.sources) if f.sources else None,
                "metadata": psycopg.types.json.Jsonb(f.metadata) if f.metadata else None,
                "date_from": f.date_from,
                "date_to": f.date_to,
                "patients": list(f.patient_ids) if f.patient_ids else None,
                "limit": limit,
                "offset": offset,
            },
        ).fetchall()
        docs = [_stored(r) for r in rows]
        if audit is not None:
            audit_log.record(conn, audit, query=None, document_ids=[d.id for d in docs])
            conn.commit()
        else:
            conn.rollback()
    return docs


def embedding_status(db: Database, *, scope: Scope | None) -> dict[str, Any]:
    """Documents, and chunks per embedding state (medpg.chunk_states), within the scope."""
    with db.connect() as conn:
        _scoped(conn, scope)
        documents = conn.execute("SELECT count(*) FROM medpg.documents").fetchone()
        states = dict(conn.execute("SELECT state, count(*) FROM medpg.chunk_states GROUP BY state").fetchall())
        model = conn.execute("SELECT model FROM medpg.embedding_space").fetchone()
        conn.rollback()
    return {
        "documents": int(documents[0]) if documents else 0,
        "chunks": {str(k): int(v) for k, v in sorted(states.items())},
        "model": model[0] if model else None,
    }


__all__ = [
    "MAX_BATCH",
    "StoredDocument",
    "delete_document",
    "embedding_status",
    "find_documents",
    "get_document",
    "upsert_documents",
    "validate_documents",
]
