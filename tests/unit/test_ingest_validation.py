"""Row validation without a database: every refusal names file, line and field, never the text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from medpg.config import Settings
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
