"""Turn raw rows into validated Records, or RowErrors that name the file, the line and the field.

Validation is the whole of what medpg accepts as a document: an id, a text (or at least a
title), sizes under MEDPG_MAX_DOCUMENT_BYTES, no NUL bytes (PostgreSQL text cannot store them),
metadata as an object, an ISO 8601 date, and each id once per file. Messages never quote
document text, only field names, sizes and positions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from medpg.config import Settings
from medpg.errors import InputError
from medpg.ingest.readers import Format, RawRow, read_rows


@dataclass(frozen=True)
class Record:
    """One valid document, with the line it came from."""

    line: int
    external_id: str
    title: str
    body: str
    metadata: dict[str, Any]
    patient_id: str | None
    document_date: datetime | None

    @property
    def content_hash(self) -> bytes:
        """SHA-256 of everything stored but the id: equal hashes make a re-ingest a no-op."""
        payload = orjson.dumps(
            [self.title, self.body, self.metadata, self.patient_id, self.document_date],
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(payload).digest()


@dataclass(frozen=True)
class RowError:
    """A row that is not a valid document: ``file:line: message``."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class _BadRow(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def read_records(
    path: Path, settings: Settings, fmt: Format = "auto", csv_map: str | None = None
) -> Iterator[Record | RowError]:
    """Every row of ``path`` as a Record or a RowError (bad row, or an id seen earlier in the file)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    limit = settings.max_document_bytes
    seen: dict[str, int] = {}
    for line_no, raw in read_rows(path, fmt, csv_map, limit):
        item = validate_row(path, line_no, raw, limit)
        if isinstance(item, Record):
            first = seen.setdefault(item.external_id, line_no)
            if first != line_no:
                item = RowError(
                    str(path), line_no, f"duplicate id {item.external_id!r} (first seen on line {first})"
                )
        yield item


def validate_row(path: Path, line: int, raw: RawRow | str, limit: int) -> Record | RowError:
    """``raw`` as a Record, or a RowError for what the reader or a field check refused."""
    if isinstance(raw, str):
        return RowError(str(path), line, raw)
    try:
        return _record(raw, line, limit)
    except _BadRow as bad:
        return RowError(str(path), line, bad.message)


def _record(raw: RawRow, line: int, limit: int) -> Record:
    obj, keys = raw.value, raw.keys
    if not isinstance(obj, dict):
        raise _BadRow(f"expected a JSON object, got {type(obj).__name__}")
    external_id = _required_text(obj, raw.id_key, limit)
    if not external_id.strip():
        raise _BadRow(f"field {raw.id_key!r} is empty")
    body = _required_text(obj, keys["text"], limit)
    title = _text(obj, keys["title"], required=False, limit=limit) or ""
    if not body.strip() and not title.strip():
        raise _BadRow(f"field {keys['text']!r} is empty and there is no title")
    if len(body.encode()) + len(title.encode()) > limit:
        raise _BadRow(f"document is over the size limit of {limit} bytes (MEDPG_MAX_DOCUMENT_BYTES)")
    metadata = _metadata(obj)
    patient = _text(obj, keys["patient_id"], required=False, limit=limit)
    date = _date(obj, keys["date"], limit)
    return Record(line, external_id, title, body, metadata, patient or None, date)


def _required_text(obj: dict[str, Any], key: str, limit: int) -> str:
    value = _text(obj, key, required=True, limit=limit)
    assert value is not None  # required=True raises instead of returning None
    return value


def _text(obj: dict[str, Any], key: str, *, required: bool, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _BadRow(f"missing field {key!r}")
        return None
    # Numeric ids are common in exported data; they are the same id as their decimal string.
    if isinstance(value, int | float) and not isinstance(value, bool) and key in {"_id", "id", "patient_id"}:
        value = str(value)
    if not isinstance(value, str):
        raise _BadRow(f"field {key!r} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise _BadRow(f"field {key!r} contains a NUL byte (PostgreSQL text cannot store it)")
    # Encoding is only needed when the characters alone could be over the byte limit.
    if len(value) > limit // 4 and len(value.encode()) > limit:
        raise _BadRow(
            f"field {key!r} is {len(value.encode())} bytes, over the limit of {limit} (MEDPG_MAX_DOCUMENT_BYTES)"
        )
    return value


def _metadata(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata", {})
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _BadRow(f"field 'metadata' must be an object, got {type(metadata).__name__}")
    _nul_free(metadata, "field 'metadata'")
    return metadata


def _nul_free(value: Any, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise _BadRow(f"{where} contains a NUL byte (PostgreSQL text cannot store it)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _nul_free(k, where)
            _nul_free(v, where)
    elif isinstance(value, list):
        for v in value:
            _nul_free(v, where)


def _date(obj: dict[str, Any], key: str, limit: int) -> datetime | None:
    raw_date = _text(obj, key, required=False, limit=limit)
    if not raw_date:
        return None
    try:
        parsed = datetime.fromisoformat(raw_date)
    except ValueError:
        raise _BadRow(f"field {key!r} is not an ISO 8601 date: {raw_date[:40]!r}") from None
    _in_stored_range(parsed, key)
    return parsed


def _in_stored_range(value: datetime, key: str) -> None:
    """Refuse a date whose instant falls outside years 1-9999 once converted to UTC.

    PostgreSQL stores timestamptz from 4713 BC, but psycopg (Python's datetime) reads back years
    1-9999 only: "0001-01-01T00:00:00+14:00" is stored as year 1 BC and every search that returns
    the document would then fail. A date without an offset is taken as UTC, as the server does with
    its default time zone.
    """
    if value.tzinfo is None:
        return  # a naive datetime is in years 1-9999 by construction and stays there in UTC
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise _BadRow(
            f"field {key!r} is outside years 1-9999 once converted to UTC (PostgreSQL would store it, "
            "but it could not be read back)"
        ) from None


__all__ = ["Record", "RowError", "read_records", "validate_row"]
