"""The rules a search argument must meet before it reaches PostgreSQL, each an InputError naming it.

One function per kind of value: counts (``k``, ``candidates``), filter strings, metadata (JSON
only, nested at most ``MAX_METADATA_DEPTH`` levels), dates and the query embedding. Messages name
the argument and the kind of problem, never the value: filter values are often patient ids (PHI).
The same limits are enforced again by the SQL functions (``medpg.check_range`` and friends in
``migrations/sql/idempotent/030_lexical_search.sql``), which raise SQLSTATE 22023.

Whether query text may appear in a message or a log line is ``medpg.privacy.shown``
(``MEDPG_LOG_TEXT``), shared with ingest.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from medpg.errors import InputError
from medpg.privacy import shown

#: The most documents one search returns.
MAX_K = 1000
#: The most candidates per retriever; the SQL functions refuse more (and n / k above it).
MAX_CANDIDATES = 10_000
#: Containers (objects and arrays) nested deeper than this in a metadata filter are refused.
MAX_METADATA_DEPTH = 32
#: Integers in a metadata filter must fit a signed 64-bit integer (what JSON tools agree on).
_INT64 = (-(2**63), 2**63 - 1)


def integer(value: object, name: str, low: int, high: int) -> int:
    """``value`` as an int within ``[low, high]``; bools, floats and strings are refused."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be an integer from {low} to {high}, got a boolean")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(
            f"{name} must be an integer from {low} to {high}, got {type(value).__name__}"
        ) from None
    if not low <= number <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}, got {number}")
    return number


def text_value(value: object, name: str) -> str:
    """A string PostgreSQL can hold: no NUL, no lone surrogate (the value is never echoed)."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InputError(f"{name} contains a NUL character, which PostgreSQL text cannot hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{name} contains a lone surrogate (not valid Unicode, e.g. an undecodable byte)"
        ) from None
    return value


def strings(value: object, name: str) -> tuple[str, ...] | None:
    """A filter of strings: one string or a list/tuple of them; None means no filter."""
    if value is None:
        return None
    if isinstance(value, str):
        return (text_value(value, f"filter {name!r}"),)
    if not isinstance(value, Sequence) or isinstance(value, bytes | bytearray | memoryview):
        raise InputError(f"filter {name!r} must be a string or a list of strings, got {type(value).__name__}")
    return tuple(text_value(v, f"filter {name!r} item {i}") for i, v in enumerate(value))


def metadata(value: object, name: str = "metadata") -> dict[str, Any] | None:
    """A jsonb containment filter: a JSON object of JSON values, checked all the way down.

    JSON means str keys; str, finite float, 64-bit int, bool, None, list/tuple and str-keyed
    mappings as values. Anything else (sets, bytes, NaN, big integers, dates) would be refused
    or silently changed by the encoder, so it is an InputError here.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InputError(f"filter {name!r} must be an object (jsonb containment), got {type(value).__name__}")
    checked = _json(value, f"filter {name!r}", 1)
    assert isinstance(checked, dict)
    return checked


def _json(value: object, where: str, depth: int) -> Any:
    """A copy of ``value`` with tuples as lists, or InputError for what JSON cannot hold."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return text_value(value, f"{where} (a string in it)")
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InputError(f"{where} holds an integer outside the signed 64-bit range")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"{where} holds a float that is NaN or infinite (JSON has neither)")
        return float(value)
    if isinstance(value, Mapping | list | tuple):
        if depth > MAX_METADATA_DEPTH:
            raise InputError(f"{where} is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InputError(f"{where} has a key that is not a string ({type(key).__name__})")
                out[text_value(key, f"{where} (a key in it)")] = _json(item, where, depth + 1)
            return out
        return [_json(item, where, depth + 1) for item in value]
    raise InputError(f"{where} holds a {type(value).__name__}; only JSON values are allowed")


def timestamp(value: object, name: str) -> datetime | None:
    """A filter date as an aware UTC datetime: a datetime, a date (midnight) or an ISO 8601 string.

    A value without a time zone is taken as UTC, as ingest does; one whose instant falls outside
    years 1-9999 in UTC is refused (it could not be compared with stored dates consistently).
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InputError(f"filter {name!r} is not an ISO 8601 date") from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise InputError(
            f"filter {name!r} must be a datetime or an ISO 8601 string, got {type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InputError(f"filter {name!r} falls outside years 1-9999 once converted to UTC") from None


def embedding(value: object) -> np.ndarray | None:
    """A caller's query embedding as a 1-d float32 array of finite numbers (None: encode the query).

    Its dimension is checked by PostgreSQL against the stored vectors.
    """
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError("query_embedding must be a 1-d array of numbers") from None
    if array.ndim != 1 or array.size == 0:
        raise InputError(f"query_embedding must be a non-empty 1-d array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("query_embedding holds NaN or infinite values")
    return array


__all__ = [
    "MAX_CANDIDATES",
    "MAX_K",
    "MAX_METADATA_DEPTH",
    "embedding",
    "integer",
    "metadata",
    "shown",
    "strings",
    "text_value",
    "timestamp",
]
