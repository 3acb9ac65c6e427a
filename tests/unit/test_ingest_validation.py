"""Row validation without a database: every refusal names file, line and field, never the text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from medpg.config import Settings
from medpg.errors import InputError
from medpg.ingest import Record, RowError, read_records


def _rows(
    tmp_path: Path, settings: Settings, rows: list[Any], name: str = "docs.jsonl"
) -> list[Record | RowError]:
    path = tmp_path / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return list(read_records(path, settings))


def _only_error(items: list[Record | RowError]) -> RowError:
    assert len(items) == 1 and isinstance(items[0], RowError), items
    return items[0]


# Failure 2: a date that reads back outside years 1-9999 once converted to UTC made every later
# search returning the document fail.
@pytest.mark.parametrize(
    "date",
    [
        "0001-01-01T00:00:00+14:00",  # year 1 BC in UTC
        "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
        "0001-01-01T13:59:59+14:00",
    ],
)
def test_dates_outside_years_1_to_9999_after_conversion_are_refused(
    tmp_path: Path, make_settings: Callable[..., Settings], date: str
) -> None:
    err = _only_error(_rows(tmp_path, make_settings(), [{"_id": "a", "text": "t", "date": date}]))
    assert (err.line, err.file) == (1, str(tmp_path / "docs.jsonl"))
    assert "'date'" in err.message and "year" in err.message
    assert date not in err.message


@pytest.mark.parametrize(
    "date", ["0001-01-01T00:00:00+00:00", "0001-01-01T14:00:00+14:00", "9999-12-31T23:59:59", "9999-12-31"]
)
def test_dates_at_the_edges_of_the_range_are_kept(
    tmp_path: Path, make_settings: Callable[..., Settings], date: str
) -> None:
    (item,) = _rows(tmp_path, make_settings(), [{"_id": "a", "text": "t", "date": date}])
    assert isinstance(item, Record), item


# Failure 6: refusals quoted document text (a mis-mapped date column printed each note's start).
NOTE = "Patient John Smith, MRN 445566, HIV positive, seen for follow-up."


def test_a_mis_mapped_date_column_does_not_print_the_note(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(f'id,text\nn1,"{NOTE}"\n', encoding="utf-8")
    csv_map = "id=id,text=text,date=text"
    [err] = list(read_records(path, make_settings(), csv_map=csv_map))
    assert isinstance(err, RowError) and (err.line, "'text'") == (2, "'text'")
    assert "not an ISO 8601 date" in err.message and "Patient" not in err.message
    # MEDPG_LOG_TEXT=true allows a short excerpt
    [shown] = list(read_records(path, make_settings(log_text=True), csv_map=csv_map))
    assert isinstance(shown, RowError) and "Patient John" in shown.message and NOTE not in shown.message


def test_a_json_lines_file_read_as_csv_does_not_print_its_first_line(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_bytes(orjson.dumps({"_id": "n1", "text": NOTE}) + b"\n")
    with pytest.raises(InputError) as exc:
        list(read_records(path, make_settings(), fmt="csv"))
    assert "notes.jsonl:1:" in str(exc.value) and "pass --format jsonl" in str(exc.value)
    for word in ("Patient", "445566", "HIV", "n1"):
        assert word not in str(exc.value)


def test_duplicate_ids_are_named_by_line_not_value(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    rows = [{"_id": "MRN-445566", "text": "a"}, {"_id": "MRN-445566", "text": "b"}]
    [_, err] = _rows(tmp_path, make_settings(), rows)
    assert isinstance(err, RowError) and err.message.startswith(
        "duplicate id in field '_id' (first seen on line 1)"
    )
    assert "445566" not in err.message
