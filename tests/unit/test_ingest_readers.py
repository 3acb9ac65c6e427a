"""The JSON Lines and CSV readers: true line numbers, quotes, headers, BOMs, missing files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from medpg.config import Settings
from medpg.errors import InputError
from medpg.ingest import Record, RowError, read_records, resolve_input

CSV_HEADER = b"id,title,text\n"


def _read(path: Path, settings: Settings, **kw: object) -> list[Record | RowError]:
    return list(read_records(path, settings, **kw))  # type: ignore[arg-type]


def _errors(items: list[Record | RowError]) -> list[RowError]:
    return [i for i in items if isinstance(i, RowError)]


def test_missing_file_and_directory_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.jsonl: no such file"):
        resolve_input(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match=r"is a directory.*corpus\.jsonl"):
        resolve_input(tmp_path)


def test_a_beir_directory_means_its_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "scifact" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_bytes(b'{"_id": "a", "text": "t"}\n')
    assert resolve_input(corpus.parent) == corpus


def test_bad_byte_in_csv_row_3_is_reported_on_its_line(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = tmp_path / "notes.csv"
    path.write_bytes(CSV_HEADER + b"1,a,fine\n2,b,bad \xff byte\n3,c,fine again\n")
    items = _read(path, make_settings())
    [err] = _errors(items)
    assert err.line == 3 and "invalid UTF-8" in err.message and "header" not in err.message
    assert [i.external_id for i in items if isinstance(i, Record)] == ["1", "3"]


def test_bad_byte_inside_a_multiline_field_names_its_physical_line(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = tmp_path / "notes.csv"
    path.write_bytes(CSV_HEADER + b'1,a,"line one\nline \xfe two"\n2,b,ok\n')
    [err] = _errors(_read(path, make_settings()))
    assert err.line == 3


def test_unterminated_quote_is_named_with_the_line_it_starts_on(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = tmp_path / "notes.csv"
    path.write_bytes(CSV_HEADER + b'1,a,fine\n2,b,"never closed\n3,c,swallowed\n4,d,swallowed\n')
    with pytest.raises(InputError, match=r"notes\.csv:3: unterminated quoted field"):
        _read(path, make_settings())


def test_duplicate_header_columns_are_refused(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    path = tmp_path / "notes.csv"
    path.write_bytes(b"id,text,ward,ward\n1,t,a,b\n")
    with pytest.raises(InputError, match=r"notes\.csv:1: .*duplicate.*'ward'"):
        _read(path, make_settings())


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.csv", b"\xef\xbb\xbf" + CSV_HEADER + b"1,a,text\n"),
        ("notes.jsonl", b'\xef\xbb\xbf{"_id": "1", "title": "a", "text": "text"}\n'),
    ],
)
def test_a_utf8_bom_is_accepted(
    tmp_path: Path, make_settings: Callable[..., Settings], name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    [item] = _read(path, make_settings())
    assert isinstance(item, Record) and (item.external_id, item.title, item.body) == ("1", "a", "text")
    assert item.metadata == {}
