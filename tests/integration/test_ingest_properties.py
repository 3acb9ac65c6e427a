"""Property tests: whatever a row holds, ingest succeeds or raises InputError, leaving no trace then."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medpg.db import Database
from medpg.errors import InputError
from medpg.ingest import ingest_file

pytestmark = pytest.mark.integration

# Surrogates included: JSON can escape them, and PostgreSQL cannot store them.
_text = st.text(st.characters(exclude_categories=()), max_size=30)
_json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), _text
)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_offsets = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
)
_dates = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.builds(lambda d, o: d.replace(tzinfo=timezone(o)).isoformat(), st.datetimes(), _offsets),
    _text,
)
_fields: dict[str, st.SearchStrategy[Any]] = {
    "_id": st.one_of(_json, _text),
    "id": _json,
    "title": st.one_of(_json, _text),
    "text": st.one_of(_json, _text),
    "metadata": _json,
    "patient_id": st.one_of(_json, _text),
    "date": st.one_of(_json, _dates),
}
_anything = st.builds(
    lambda fixed, extra: {**extra, **fixed},
    st.fixed_dictionaries({}, optional=_fields),
    st.dictionaries(_text, _json, max_size=2),
)
# Rows that are nearly documents (a string id and text), so that the writes are exercised too.
_nearly_valid = st.builds(
    lambda fixed, rest: {**rest, **fixed},
    st.fixed_dictionaries({"_id": st.text(min_size=1, max_size=20), "text": _text}),
    st.fixed_dictionaries({}, optional={k: v for k, v in _fields.items() if k not in ("_id", "text")}),
)
_rows = st.one_of(_nearly_valid, _anything)


def _checksum(db: Database) -> tuple[int, str | None]:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*), md5(string_agg(d::text, '|' ORDER BY d.id)) FROM medpg.documents d"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _ingest_or_refuse(db: Database, path: Path) -> None:
    before = _checksum(db)
    try:
        ingest_file(db, db.settings, path, progress=False)
    except InputError:
        assert _checksum(db) == before, "an InputError left the database changed"
        return
    with db.connect() as conn:  # what was accepted can be read back, as searches will
        conn.execute("SELECT * FROM medpg.documents").fetchall()


_hypothesis = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_hypothesis
@given(rows=st.lists(_rows, min_size=1, max_size=3))
def test_any_json_row_is_ingested_or_refused_cleanly(db: Database, tmp_path: Path, rows: list[Any]) -> None:
    path = tmp_path / "rows.jsonl"
    # The standard library writes what orjson cannot (big integers, NaN, lone surrogates escaped).
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _ingest_or_refuse(db, path)


_cell = st.one_of(_text, st.sampled_from(['"', '""', "\n", "\r\n", ",", "\x00", "0001-01-01T00:00:00+14:00"]))


@_hypothesis
@given(
    header=st.lists(st.sampled_from(["id", "text", "title", "patient_id", "date", "ward", "id"]), max_size=6),
    cells=st.lists(st.lists(_cell, max_size=7), min_size=1, max_size=3),
    raw_tail=st.binary(max_size=8),
)
def test_any_csv_cells_are_ingested_or_refused_cleanly(
    db: Database, tmp_path: Path, header: list[str], cells: list[list[str]], raw_tail: bytes
) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(cells)
    path = tmp_path / "cells.csv"
    # Lone surrogates cannot be written as UTF-8: written as replacement bytes, then raw bytes after.
    path.write_bytes(out.getvalue().encode("utf-8", errors="replace") + raw_tail)
    _ingest_or_refuse(db, path)
