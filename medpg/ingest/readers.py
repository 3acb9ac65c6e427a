"""Read a documents file row by row: format detection and the JSON Lines and CSV readers.

A reader knows the file's shape, not the fields' rules: it yields ``(line, RawRow)`` for every
row it could parse and ``(line, message)`` for one it could not (bad UTF-8, bad JSON, a malformed
CSV row), so validation reports both kinds the same way. BEIR's ``corpus.jsonl`` is JSON Lines.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from medpg.errors import InputError

Format = Literal["auto", "jsonl", "csv"]
FileFormat = Literal["jsonl", "csv"]
FIELDS = ("id", "title", "text", "patient_id", "date")

# JSON Lines keys are medpg's own names; CSV columns come from the mapping.
_JSONL_KEYS: Mapping[str, str] = {k: k for k in ("text", "title", "patient_id", "date")}


@dataclass(frozen=True)
class RawRow:
    """One parsed row before validation: the JSON value and where medpg's fields are in it.

    ``keys`` maps text, title, patient_id and date to keys of ``value``; ``id_key`` names the id.
    """

    value: Any
    id_key: str
    keys: Mapping[str, str]


ReadRow = tuple[int, RawRow | str]


def detect_format(path: Path) -> FileFormat:
    """The reader for ``path`` from its extension; InputError when the extension says nothing."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix in {".csv", ".tsv"}:
        return "csv"
    raise InputError(f"{path}: cannot tell the format from the extension {suffix!r}; pass --format jsonl|csv")


def default_source(path: Path) -> str:
    """BEIR's corpus.jsonl takes its data set's directory name; any other file its own stem."""
    return path.parent.name if path.name == "corpus.jsonl" and path.parent.name else path.stem


def parse_csv_map(spec: str | None) -> dict[str, str]:
    """``id=note_id,text=note_text`` -> {"id": "note_id", "text": "note_text"} (medpg field -> column)."""
    mapping = {f: f for f in FIELDS}
    if not spec:
        return mapping
    for part in spec.split(","):
        key, sep, column = part.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or key not in FIELDS or not column:
            raise InputError(
                f"bad column mapping {part!r}: expected FIELD=COLUMN with FIELD one of {', '.join(FIELDS)}"
            )
        mapping[key] = column
    return mapping


def read_rows(path: Path, fmt: Format, csv_map: str | None, limit: int) -> Iterator[ReadRow]:
    """Every non-blank row of ``path`` in file order; ``limit`` is MEDPG_MAX_DOCUMENT_BYTES."""
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "jsonl":
        return read_jsonl(path, limit)
    return read_csv(path, parse_csv_map(csv_map), limit)


def read_jsonl(path: Path, limit: int) -> Iterator[ReadRow]:
    """One JSON value per line; the id is ``_id`` (BEIR) when present, else ``id``."""
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if raw.strip():
                yield line_no, _parse_json_line(raw, limit)


def _parse_json_line(raw: bytes, limit: int) -> RawRow | str:
    # A cheap bound before decoding and parsing a runaway line; the exact size checks are on the
    # decoded fields, in validation.
    if len(raw) > 2 * limit + 4096:
        return f"line is {len(raw)} bytes, over the limit (MEDPG_MAX_DOCUMENT_BYTES={limit})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start} of the line"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    id_key = "_id" if isinstance(value, dict) and "_id" in value else "id"
    return RawRow(value, id_key, _JSONL_KEYS)


def read_csv(path: Path, mapping: dict[str, str], limit: int) -> Iterator[ReadRow]:
    """CSV (or TSV by extension) with a header; unmapped non-empty columns become metadata."""
    csv.field_size_limit(max(limit * 2, 131072))
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    try:
        fh = path.open("r", encoding="utf-8", newline="")
        reader = csv.DictReader(fh, dialect=dialect)
        header = reader.fieldnames or []
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}:1: invalid UTF-8 in the header at byte {exc.start}") from None
    with fh:
        _check_header(path, header, mapping)
        keys = {k: mapping[k] for k in ("text", "title", "patient_id", "date")}
        mapped = set(mapping.values())
        rows = iter(reader)
        while True:
            line_no = reader.line_num + 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                yield line_no, f"invalid UTF-8 at byte {exc.start}"
                return  # the decoder cannot resynchronise inside a CSV stream
            except csv.Error as exc:
                yield line_no, f"malformed CSV: {exc}"
                continue
            yield line_no, _csv_row(row, len(header), mapping, keys, mapped)


def _check_header(path: Path, header: Sequence[str], mapping: Mapping[str, str]) -> None:
    missing = [mapping[k] for k in ("id", "text") if mapping[k] not in header]
    if missing:
        raise InputError(
            f"{path}:1: the CSV header has no column {', '.join(repr(m) for m in missing)} "
            f"(columns: {', '.join(header)}); map them with --csv-map id=COLUMN,text=COLUMN"
        )


def _csv_row(
    row: dict[Any, Any], width: int, mapping: Mapping[str, str], keys: Mapping[str, str], mapped: set[str]
) -> RawRow | str:
    if None in row:  # csv.DictReader files surplus fields under the key None
        return f"row has more fields than the header ({width})"
    # An empty cell is an absent field, except the text, whose emptiness validation reports.
    value: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
    value[mapping["text"]] = row.get(mapping["text"])
    value["metadata"] = {k: v for k, v in row.items() if k not in mapped and v not in (None, "")}
    return RawRow(value, mapping["id"], keys)


__all__ = [
    "FIELDS",
    "FileFormat",
    "Format",
    "RawRow",
    "ReadRow",
    "default_source",
    "detect_format",
    "parse_csv_map",
    "read_csv",
    "read_jsonl",
    "read_rows",
]
