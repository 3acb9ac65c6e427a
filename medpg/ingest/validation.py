"""Turn raw rows into validated Records, or RowErrors that name the file, the line and the field.

Validation is the whole of what medpg accepts as a document: an id, a text (or at least a
title), sizes under MEDPG_MAX_DOCUMENT_BYTES, no NUL bytes (PostgreSQL text cannot store them),
metadata as an object, an ISO 8601 date, each id once per file, and PostgreSQL's own limits
(index entries, the tsvector size, the dates psycopg can read back), so that the database never
refuses a row validation accepted. Messages never quote document text or values, only field
names, sizes and positions (``excerpt``: MEDPG_LOG_TEXT allows a short excerpt).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from medpg.config import Settings
from medpg.errors import InputError
from medpg.ingest.readers import Format, RawRow, default_source, read_rows, resolve_input
from medpg.privacy import excerpt

# A btree index entry holds at most ~2704 bytes (a third of an 8 KB page, less headers), and
# PostgreSQL compresses a value before that check, so whether a long value fits depends on its
# content: documents has a unique btree index on (source, external_id) and one on patient_id.
# These limits, in bytes of UTF-8 and checked before compression, leave room for the tuple and
# column headers whatever the content, and are far above any real identifier.
KEY_BYTES = 2000
"""Bytes of UTF-8 that source and external id may take together (the unique index on both)."""
SOURCE_BYTES = 1000
"""Bytes of UTF-8 a source name may take, leaving at least 1000 for each document's id."""
PATIENT_ID_BYTES = 1000
"""Bytes of UTF-8 a patient id may take (its btree index)."""

# A tsvector holds at most 1 MB of lexemes and positions. Its size is at most about five times
# the text's (hyphenated words and URLs also index their parts), so a title and body under this
# size always fit; a larger one is checked exactly by the server (``text_vector_check``).
TEXT_VECTOR_CHECK_BYTES = 64 * 1024

TextVectorCheck = Callable[[str, str], "str | None"]
"""(title, body) -> why their tsvector cannot be stored, or None when it can."""


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


@dataclass(frozen=True)
class Limits:
    """What one row may hold: MEDPG_MAX_DOCUMENT_BYTES and the id bytes its source leaves."""

    document_bytes: int
    id_bytes: int = KEY_BYTES - SOURCE_BYTES
    #: MEDPG_LOG_TEXT: messages may show a short excerpt of a refused value.
    log_text: bool = False

    @classmethod
    def for_source(cls, settings: Settings, source: str) -> Limits:
        """The limits for rows stored under ``source`` (InputError when the name itself cannot be)."""
        check_source(source)
        return cls(settings.max_document_bytes, KEY_BYTES - len(source.encode()), settings.log_text)


def check_source(source: str) -> None:
    """InputError unless ``source`` can be stored, indexed and addressed: non-empty UTF-8, no NUL or
    '/', not too long."""
    if not source.strip():
        raise InputError("the source name is empty; pass --source NAME")
    try:
        size = len(source.encode())
    except UnicodeEncodeError:  # a file name with undecodable bytes, decoded with surrogateescape
        raise InputError("the source name is not valid UTF-8; pass --source NAME") from None
    if "\x00" in source:
        raise InputError("the source name contains a NUL byte; pass --source NAME")
    if "/" in source:  # the API addresses documents as /documents/{source}/{id}
        raise InputError("the source name contains '/', which cannot be part of a document's URL; pass --source NAME")
    if size > SOURCE_BYTES:
        raise InputError(
            f"the source name is {size} bytes, over the limit of {SOURCE_BYTES}; pass --source NAME"
        )


def read_records(
    path: Path,
    settings: Settings,
    fmt: Format = "auto",
    csv_map: str | None = None,
    *,
    source: str | None = None,
    text_vector_check: TextVectorCheck | None = None,
) -> Iterator[Record | RowError]:
    """Every row of ``path`` as a Record or a RowError (bad row, or an id seen earlier in the file).

    ``source`` (default: from the file name) sets how many bytes an id may take;
    ``text_vector_check`` checks a document over TEXT_VECTOR_CHECK_BYTES on the server.
    """
    path = resolve_input(path)
    limits = Limits.for_source(settings, source if source is not None else default_source(path))
    seen: dict[str, int] = {}
    for line_no, raw in read_rows(path, fmt, csv_map, limits.document_bytes, log_text=limits.log_text):
        item = validate_row(path, line_no, raw, limits)
        if isinstance(item, Record) and text_vector_check is not None:
            item = _check_text_vector(path, item, text_vector_check)
        if isinstance(item, Record):
            first = seen.setdefault(item.external_id, line_no)
            if first != line_no:
                item = RowError(
                    str(path),
                    line_no,
                    f"duplicate id in field {_id_key(raw)!r} (first seen on line {first})"
                    f"{excerpt(item.external_id, limits.log_text)}",
                )
        yield item


def _id_key(raw: RawRow | str) -> str:
    return raw.id_key if isinstance(raw, RawRow) else "id"


def validate_row(path: Path, line: int, raw: RawRow | str, limits: Limits | int) -> Record | RowError:
    """``raw`` as a Record, or a RowError for what the reader or a field check refused.

    ``limits`` as a plain int is MEDPG_MAX_DOCUMENT_BYTES with the default id limit.
    """
    if isinstance(raw, str):
        return RowError(str(path), line, raw)
    if isinstance(limits, int):
        limits = Limits(limits)
    try:
        return _record(raw, line, limits)
    except _BadRow as bad:
        return RowError(str(path), line, bad.message)


def _check_text_vector(path: Path, record: Record, check: TextVectorCheck) -> Record | RowError:
    """A large document whose tsvector the server says cannot be stored becomes a RowError."""
    if len(record.body) + len(record.title) <= TEXT_VECTOR_CHECK_BYTES // 4 or (
        len(record.body.encode()) + len(record.title.encode()) <= TEXT_VECTOR_CHECK_BYTES
    ):
        return record
    refusal = check(record.title, record.body)
    return record if refusal is None else RowError(str(path), record.line, refusal)


def _record(raw: RawRow, line: int, limits: Limits) -> Record:
    obj, keys = raw.value, raw.keys
    limit = limits.document_bytes
    if not isinstance(obj, dict):
        raise _BadRow(f"expected a JSON object, got {type(obj).__name__}")
    external_id = _required_text(obj, raw.id_key, limit)
    if not external_id.strip():
        raise _BadRow(f"field {raw.id_key!r} is empty")
    _within_index_limit(external_id, raw.id_key, limits.id_bytes, "with the source name, its unique index")
    body = _required_text(obj, keys["text"], limit)
    title = _text(obj, keys["title"], required=False, limit=limit) or ""
    if not body.strip() and not title.strip():
        raise _BadRow(f"field {keys['text']!r} is empty and there is no title")
    if len(body.encode()) + len(title.encode()) > limit:
        raise _BadRow(f"document is over the size limit of {limit} bytes (MEDPG_MAX_DOCUMENT_BYTES)")
    metadata = _metadata(obj)
    patient = _text(obj, keys["patient_id"], required=False, limit=limit)
    if patient:
        _within_index_limit(patient, keys["patient_id"], PATIENT_ID_BYTES, "its index")
    date = _date(obj, keys["date"], limits)
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


def _within_index_limit(value: str, key: str, limit: int, index: str) -> None:
    # Characters bound bytes from below (at most 4 bytes each): encode only when it can matter.
    if len(value) * 4 > limit and (size := len(value.encode())) > limit:
        raise _BadRow(
            f"field {key!r} is {size} bytes, over the limit of {limit} for {index} (PostgreSQL btree)"
        )


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


def _date(obj: dict[str, Any], key: str, limits: Limits) -> datetime | None:
    raw_date = _text(obj, key, required=False, limit=limits.document_bytes)
    if not raw_date:
        return None
    try:
        parsed = datetime.fromisoformat(raw_date)
    except ValueError:
        # A mis-mapped column puts note text here: the value is shown only under MEDPG_LOG_TEXT.
        raise _BadRow(f"field {key!r} is not an ISO 8601 date{excerpt(raw_date, limits.log_text)}") from None
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


__all__ = [
    "KEY_BYTES",
    "PATIENT_ID_BYTES",
    "SOURCE_BYTES",
    "TEXT_VECTOR_CHECK_BYTES",
    "Limits",
    "Record",
    "RowError",
    "TextVectorCheck",
    "check_source",
    "read_records",
    "validate_row",
]
