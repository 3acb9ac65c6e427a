"""Read a documents file row by row: format detection and the JSON Lines and CSV readers.

A reader knows the file's shape, not the fields' rules: it yields ``(line, RawRow)`` for every
row it could parse and ``(line, message)`` for one it could not (bad UTF-8, bad JSON, a malformed
CSV row), so validation reports both kinds the same way. Lines are the file's physical lines, so
a CSV row is named by the line it starts on and a bad byte by the line it is on. A problem after
which the rest of the file cannot be located (an unterminated quote, a bad header) raises
InputError instead: skipping it would silently drop the rows it swallowed. A UTF-8 byte order
mark (Excel writes one) is ignored. BEIR's ``corpus.jsonl`` is JSON Lines.
"""

from __future__ import annotations

import csv
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from medpg.errors import InputError

Format = Literal["auto", "jsonl", "csv"]
FileFormat = Literal["jsonl", "csv"]
FIELDS = ("id", "title", "text", "patient_id", "date")

BOM = b"\xef\xbb\xbf"

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


def resolve_input(path: Path) -> Path:
    """The file to read for ``path``: the file itself, or a BEIR data set directory's corpus.jsonl.

    InputError (never an OSError) when there is no such file, it cannot be read, or a directory
    has no corpus.jsonl.
    """
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        corpus = path / "corpus.jsonl"
        if not corpus.is_file():
            raise InputError(
                f"{path}: is a directory without a corpus.jsonl (a BEIR data set); "
                "pass a JSON Lines or CSV file"
            )
        path = corpus
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    return path


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


def read_rows(
    path: Path, fmt: Format, csv_map: str | None, limit: int, *, log_text: bool = False
) -> Iterator[ReadRow]:
    """Every non-blank row of ``path`` in file order; ``limit`` is MEDPG_MAX_DOCUMENT_BYTES.

    ``log_text`` (MEDPG_LOG_TEXT) lets messages show what the file holds, such as its header.
    """
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "jsonl":
        return read_jsonl(path, limit)
    return read_csv(path, parse_csv_map(csv_map), limit, log_text=log_text)


def read_jsonl(path: Path, limit: int) -> Iterator[ReadRow]:
    """One JSON value per line; the id is ``_id`` (BEIR) when present, else ``id``."""
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
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


class _Lines:
    """A binary file's physical lines as text for csv.reader, counting them and noting bad UTF-8.

    Decoding line by line (not a text stream's 8 KB blocks) is what ties a bad byte to its line
    and lets reading go on after it.
    """

    def __init__(self, fh: Iterable[bytes]) -> None:
        self._fh = iter(fh)
        self.count = 0
        self.bad: list[int] = []
        #: Whether the first line looks like JSON (a JSON Lines file read as CSV).
        self.json_like = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = next(self._fh)
        self.count += 1
        if self.count == 1:
            raw = raw[len(BOM) :] if raw.startswith(BOM) else raw
            self.json_like = raw.lstrip().startswith((b"{", b"["))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad.append(self.count)
            return raw.decode("utf-8", errors="replace")


def read_csv(path: Path, mapping: dict[str, str], limit: int, *, log_text: bool = False) -> Iterator[ReadRow]:
    """CSV (or TSV by extension) with a header; unmapped non-empty columns become metadata."""
    csv.field_size_limit(_field_limit(limit))
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    with path.open("rb") as fh:
        lines = _Lines(fh)
        # strict: an unterminated quote is an error at the end of the file, not a row that
        # silently swallowed the rest of it.
        reader = csv.reader(lines, dialect=dialect, strict=True)
        header = _read_header(path, reader, lines)
        _check_header(path, header, mapping, log_text, json_like=lines.json_like)
        keys = {k: mapping[k] for k in ("text", "title", "patient_id", "date")}
        mapped = set(mapping.values())
        while True:
            start = lines.count + 1
            lines.bad.clear()
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                _raise_if_unrecoverable(path, start, exc, limit)
                yield start, f"malformed CSV row: {exc}"
                continue
            if lines.bad:
                yield lines.bad[0], "invalid UTF-8 on this line"
            elif fields:  # csv.reader gives [] for a blank line
                yield start, _csv_row(header, fields, mapping, keys, mapped)


def _field_limit(limit: int) -> int:
    return max(limit * 2, 131072)


def _read_header(path: Path, reader: Iterator[list[str]], lines: _Lines) -> list[str]:
    hint = " (the first line looks like JSON: pass --format jsonl)"
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise InputError(f"{path}:1: malformed CSV header: {exc}{hint if lines.json_like else ''}") from None
    if lines.bad:
        raise InputError(f"{path}:{lines.bad[0]}: invalid UTF-8 in the CSV header")
    return header


def _raise_if_unrecoverable(path: Path, start: int, exc: csv.Error, limit: int) -> None:
    """InputError for a CSV error after which the following rows cannot be told apart."""
    if "unexpected end of data" in str(exc):
        raise InputError(
            f"{path}:{start}: unterminated quoted field: a quote opened in the row starting on this "
            "line is never closed, so the rest of the file is inside it"
        ) from None
    if "field larger than field limit" in str(exc):
        raise InputError(
            f"{path}:{start}: a field of the row starting on this line is over {_field_limit(limit)} "
            "characters (an unterminated quote?)"
        ) from None


def _check_header(
    path: Path, header: Sequence[str], mapping: Mapping[str, str], log_text: bool, *, json_like: bool
) -> None:
    duplicated = [name for name, n in Counter(header).items() if n > 1]
    if duplicated:
        raise InputError(
            f"{path}:1: the CSV header has duplicate columns {', '.join(repr(d) for d in duplicated)}; "
            "each column needs its own name"
        )
    missing = [mapping[k] for k in ("id", "text") if mapping[k] not in header]
    if missing:
        # The "header" of a file that is not CSV is its first row of data: counted, not shown.
        shown = f"; columns: {', '.join(header)}" if log_text else ""
        raise InputError(
            f"{path}:1: the CSV header has no column {', '.join(repr(m) for m in missing)} "
            f"(it has {len(header)} column(s){shown}); "
            + (
                "the first line looks like JSON: pass --format jsonl"
                if json_like
                else "map them with --csv-map id=COLUMN,text=COLUMN"
            )
        )


def _csv_row(
    header: Sequence[str],
    fields: Sequence[str],
    mapping: Mapping[str, str],
    keys: Mapping[str, str],
    mapped: set[str],
) -> RawRow | str:
    if len(fields) > len(header):
        return f"row has more fields ({len(fields)}) than the header ({len(header)})"
    row: dict[str, str | None] = dict.fromkeys(header)
    row.update(zip(header, fields, strict=False))
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
    "resolve_input",
]
