"""Read documents from files, validate them, chunk them and upsert them into PostgreSQL.

Formats: JSON Lines with ``_id`` (or ``id``), ``title``, ``text``, optional ``metadata``
(an object), ``patient_id`` and ``date`` — BEIR's ``corpus.jsonl`` is this shape — and CSV
with a column mapping. Every row is validated before anything is written: without
``skip_invalid`` one bad row stops the run with the file and line named and nothing written;
with it, bad rows are skipped and reported one by one.

Writes go in batches, one transaction each, through COPY into a temporary table and one
upsert keyed by (source, external id). A content hash makes re-ingesting a file a no-op for
unchanged documents; a changed document gets new chunks, whose changed content hash marks
them for re-embedding.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import psycopg

from medpg.chunking import Chunker, chunk_hash
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import DatabaseError, InputError

log = logging.getLogger(__name__)

Format = Literal["auto", "jsonl", "csv"]
FIELDS = ("id", "title", "text", "patient_id", "date")
MAX_REPORTED_ERRORS = 20
KEEP_IN_MEMORY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Record:
    line: int
    external_id: str
    title: str
    body: str
    metadata: dict[str, Any]
    patient_id: str | None
    document_date: datetime | None

    @property
    def content_hash(self) -> bytes:
        payload = orjson.dumps(
            [self.title, self.body, self.metadata, self.patient_id, self.document_date],
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(payload).digest()


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class IngestReport:
    file: str
    source: str
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    skipped: list[RowError] = field(default_factory=list)
    seconds: float = 0.0
    changed_document_ids: list[int] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class _BadRow(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------------------------
# reading and validation


def detect_format(path: Path) -> Literal["jsonl", "csv"]:
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


def _text(obj: dict[str, Any], key: str, *, required: bool, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _BadRow(f"missing field {key!r}")
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and key in {"_id", "id", "patient_id"}:
        value = str(value)
    if not isinstance(value, str):
        raise _BadRow(f"field {key!r} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise _BadRow(f"field {key!r} contains a NUL byte (PostgreSQL text cannot store it)")
    if len(value) > limit // 4 and len(value.encode()) > limit:
        raise _BadRow(
            f"field {key!r} is {len(value.encode())} bytes, over the limit of {limit} (MEDPG_MAX_DOCUMENT_BYTES)"
        )
    return value


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


def _record(obj: Any, line: int, id_key: str, keys: dict[str, str], limit: int) -> Record:
    if not isinstance(obj, dict):
        raise _BadRow(f"expected a JSON object, got {type(obj).__name__}")
    external_id = _text(obj, id_key, required=True, limit=limit)
    assert external_id is not None
    if not external_id.strip():
        raise _BadRow(f"field {id_key!r} is empty")
    body = _text(obj, keys["text"], required=True, limit=limit)
    assert body is not None
    title = _text(obj, keys["title"], required=False, limit=limit) or ""
    if not body.strip() and not title.strip():
        raise _BadRow(f"field {keys['text']!r} is empty and there is no title")
    if len(body.encode()) + len(title.encode()) > limit:
        raise _BadRow(f"document is over the size limit of {limit} bytes (MEDPG_MAX_DOCUMENT_BYTES)")
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _BadRow(f"field 'metadata' must be an object, got {type(metadata).__name__}")
    _nul_free(metadata, "field 'metadata'")
    patient = _text(obj, keys["patient_id"], required=False, limit=limit)
    raw_date = _text(obj, keys["date"], required=False, limit=limit)
    date = None
    if raw_date:
        try:
            date = datetime.fromisoformat(raw_date)
        except ValueError:
            raise _BadRow(f"field {keys['date']!r} is not an ISO 8601 date: {raw_date[:40]!r}") from None
    return Record(line, external_id, title, body, metadata, patient or None, date)


def _iter_jsonl(path: Path, limit: int) -> Iterator[tuple[int, Record | str]]:
    keys = {"text": "text", "title": "title", "patient_id": "patient_id", "date": "date"}
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                if len(raw) > 2 * limit + 4096:
                    raise _BadRow(
                        f"line is {len(raw)} bytes, over the limit (MEDPG_MAX_DOCUMENT_BYTES={limit})"
                    )
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _BadRow(f"invalid UTF-8 at byte {exc.start} of the line") from None
                try:
                    obj = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise _BadRow(f"invalid JSON: {exc}") from None
                id_key = "_id" if isinstance(obj, dict) and "_id" in obj else "id"
                yield line_no, _record(obj, line_no, id_key, keys, limit)
            except _BadRow as bad:
                yield line_no, bad.message


def _iter_csv(path: Path, mapping: dict[str, str], limit: int) -> Iterator[tuple[int, Record | str]]:
    csv.field_size_limit(max(limit * 2, 131072))
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    try:
        fh = path.open("r", encoding="utf-8", newline="")
        reader = csv.DictReader(fh, dialect=dialect)
        header = reader.fieldnames or []
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}:1: invalid UTF-8 in the header at byte {exc.start}") from None
    with fh:
        missing = [mapping[k] for k in ("id", "text") if mapping[k] not in header]
        if missing:
            raise InputError(
                f"{path}:1: the CSV header has no column {', '.join(repr(m) for m in missing)} "
                f"(columns: {', '.join(header)}); map them with --csv-map id=COLUMN,text=COLUMN"
            )
        mapped = set(mapping.values())
        keys = {k: mapping[k] for k in ("text", "title", "patient_id", "date")}
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
            try:
                if None in row:
                    raise _BadRow(f"row has more fields than the header ({len(header)})")
                obj: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
                obj[mapping["text"]] = row.get(mapping["text"])
                extra = {k: v for k, v in row.items() if k not in mapped and v not in (None, "")}
                obj["metadata"] = extra
                yield line_no, _record(obj, line_no, mapping["id"], keys, limit)
            except _BadRow as bad:
                yield line_no, bad.message


def read_records(
    path: Path, settings: Settings, fmt: Format = "auto", csv_map: str | None = None
) -> Iterator[Record | RowError]:
    """Every row of ``path`` as a Record or a RowError (bad row, or an id seen earlier in the file)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    kind = detect_format(path) if fmt == "auto" else fmt
    limit = settings.max_document_bytes
    rows = _iter_jsonl(path, limit) if kind == "jsonl" else _iter_csv(path, parse_csv_map(csv_map), limit)
    seen: dict[str, int] = {}
    for line_no, item in rows:
        if isinstance(item, str):
            yield RowError(str(path), line_no, item)
            continue
        first = seen.setdefault(item.external_id, line_no)
        if first != line_no:
            yield RowError(
                str(path), line_no, f"duplicate id {item.external_id!r} (first seen on line {first})"
            )
            continue
        yield item


# --------------------------------------------------------------------------------------------------
# writing

_STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS _medpg_stage_docs (
    external_id text, title text, body text, metadata jsonb, patient_id text,
    document_date timestamptz, content_hash bytea
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _medpg_stage_chunks (
    document_id bigint, ordinal integer, text text, char_start integer, char_end integer,
    token_count integer, content_hash bytea
) ON COMMIT DELETE ROWS;
"""

_UPSERT_DOCS = """
INSERT INTO medpg.documents AS d
    (source, external_id, title, body, metadata, patient_id, document_date, content_hash)
SELECT %(source)s, external_id, title, body, metadata, patient_id, document_date, content_hash
FROM _medpg_stage_docs
ORDER BY external_id
ON CONFLICT (source, external_id) DO UPDATE SET
    title = EXCLUDED.title, body = EXCLUDED.body, metadata = EXCLUDED.metadata,
    patient_id = EXCLUDED.patient_id, document_date = EXCLUDED.document_date,
    content_hash = EXCLUDED.content_hash, updated_at = now()
WHERE d.content_hash IS DISTINCT FROM EXCLUDED.content_hash
RETURNING d.id, d.external_id, (xmax = 0) AS inserted
"""

# A chunk whose text is unchanged keeps its vector and attempt count; a changed one is pending
# again because its content_hash no longer equals embedded_hash.
_UPSERT_CHUNKS = """
INSERT INTO medpg.chunks AS c
    (document_id, ordinal, text, char_start, char_end, token_count, content_hash)
SELECT document_id, ordinal, text, char_start, char_end, token_count, content_hash
FROM _medpg_stage_chunks
ORDER BY document_id, ordinal
ON CONFLICT (document_id, ordinal) DO UPDATE SET
    text = EXCLUDED.text, char_start = EXCLUDED.char_start, char_end = EXCLUDED.char_end,
    token_count = EXCLUDED.token_count, content_hash = EXCLUDED.content_hash,
    attempts = CASE WHEN c.content_hash = EXCLUDED.content_hash THEN c.attempts ELSE 0 END,
    last_error = CASE WHEN c.content_hash = EXCLUDED.content_hash THEN c.last_error END,
    failed_at = CASE WHEN c.content_hash = EXCLUDED.content_hash THEN c.failed_at END
WHERE (c.content_hash, c.char_start, c.char_end, c.token_count)
      IS DISTINCT FROM (EXCLUDED.content_hash, EXCLUDED.char_start, EXCLUDED.char_end, EXCLUDED.token_count)
"""

_DELETE_EXTRA_CHUNKS = """
DELETE FROM medpg.chunks c
USING (SELECT document_id, max(ordinal) AS last FROM _medpg_stage_chunks GROUP BY document_id) s
WHERE c.document_id = s.document_id AND c.ordinal > s.last
"""


@dataclass
class BatchResult:
    first_line: int
    last_line: int
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    changed_ids: list[int] = field(default_factory=list)


class DocumentWriter:
    """Writes batches of validated records, one transaction per batch, each on a pooled connection."""

    def __init__(self, db: Database, settings: Settings, source: str) -> None:
        self.db = db
        self.source = source
        self.chunker = Chunker.from_settings(settings)

    def write(self, batch: Sequence[Record]) -> BatchResult:
        """Upsert one batch in one transaction (thread-safe: each call checks out its own connection)."""
        first, last = batch[0].line, batch[-1].line
        try:
            with self.db.connect() as conn:
                try:
                    return self._write(conn, batch, BatchResult(first, last, rows=len(batch)), fast=True)
                except psycopg.errors.UniqueViolation:
                    # Another writer inserted some of these documents since we looked: take the
                    # upsert path, which treats them as existing.
                    return self._write(conn, batch, BatchResult(first, last, rows=len(batch)), fast=False)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"writing lines {first}-{last} failed and was rolled back: "
                f"{str(exc).strip().splitlines()[0]}. Batches before it are committed; running the same "
                "ingest again skips them as unchanged."
            ) from None

    def _write(self, conn: Any, batch: Sequence[Record], result: BatchResult, *, fast: bool) -> BatchResult:
        hashes = {r.external_id: r.content_hash for r in batch}
        with conn.transaction():
            existing = dict(
                conn.execute(
                    "SELECT external_id, content_hash FROM medpg.documents "
                    "WHERE source = %s AND external_id = ANY(%s)",
                    (self.source, list(hashes)),
                ).fetchall()
            )
            new = [r for r in batch if r.external_id not in existing]
            changed = [
                r
                for r in batch
                if r.external_id in existing and existing[r.external_id] != hashes[r.external_id]
            ]
            result.unchanged += len(batch) - len(new) - len(changed)
            if not fast:
                new, changed = [], new + changed
            docs: list[tuple[int, Record]] = []
            if new:
                inserted = self._insert_new(conn, new, hashes)
                result.inserted += len(inserted)
                result.chunks_written += self._write_chunks(conn, inserted, replace=False)
                docs += inserted
            if changed:
                upserted = self._upsert(conn, changed, hashes)
                # A row another writer already brought to this content comes back as no row: unchanged.
                result.unchanged += len(changed) - len(upserted)
                result.inserted += sum(1 for _, _, was_inserted in upserted if was_inserted)
                result.updated += sum(1 for _, _, was_inserted in upserted if not was_inserted)
                by_id = {r.external_id: r for r in changed}
                updated = [(doc_id, by_id[ext]) for doc_id, ext, _ in upserted]
                result.chunks_written += self._write_chunks(conn, updated, replace=True)
                docs += updated
            result.changed_ids = [doc_id for doc_id, _ in docs]
        return result

    def _insert_new(
        self, conn: Any, records: list[Record], hashes: dict[str, bytes]
    ) -> list[tuple[int, Record]]:
        """New documents go straight into the table by COPY, with ids taken from its sequence."""
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('medpg.documents', 'id')) FROM generate_series(1, %s)",
                (len(records),),
            )
        ]
        with conn.cursor().copy(
            "COPY medpg.documents (id, source, external_id, title, body, metadata, patient_id, document_date, "
            "content_hash) FROM STDIN"
        ) as copy:
            for doc_id, r in zip(ids, records, strict=True):
                copy.write_row(
                    (
                        doc_id,
                        self.source,
                        r.external_id,
                        r.title,
                        r.body,
                        orjson.dumps(r.metadata).decode(),
                        r.patient_id,
                        r.document_date,
                        hashes[r.external_id],
                    )
                )
        return list(zip(ids, records, strict=True))

    def _upsert(
        self, conn: Any, records: list[Record], hashes: dict[str, bytes]
    ) -> list[tuple[int, str, bool]]:
        conn.execute(_STAGE_SQL)
        with conn.cursor().copy(
            "COPY _medpg_stage_docs (external_id, title, body, metadata, patient_id, document_date, "
            "content_hash) FROM STDIN"
        ) as copy:
            for r in records:
                copy.write_row(
                    (
                        r.external_id,
                        r.title,
                        r.body,
                        orjson.dumps(r.metadata).decode(),
                        r.patient_id,
                        r.document_date,
                        hashes[r.external_id],
                    )
                )
        return [tuple(row) for row in conn.execute(_UPSERT_DOCS, {"source": self.source}).fetchall()]

    def _write_chunks(self, conn: Any, docs: list[tuple[int, Record]], *, replace: bool) -> int:
        """Chunk ``docs``; new documents' chunks are copied in, changed ones' chunks upserted."""
        if not docs:
            return 0
        chunk_lists = self.chunker.chunk_many([r.title for _, r in docs], [r.body for _, r in docs])
        target = "_medpg_stage_chunks" if replace else "medpg.chunks"
        n = 0
        with conn.cursor().copy(
            f"COPY {target} (document_id, ordinal, text, char_start, char_end, token_count, content_hash) "
            "FROM STDIN"
        ) as copy:
            for (doc_id, rec), chunks in zip(docs, chunk_lists, strict=True):
                for ch in chunks:
                    copy.write_row(
                        (
                            doc_id,
                            ch.ordinal,
                            ch.text,
                            ch.char_start,
                            ch.char_end,
                            ch.token_count,
                            chunk_hash(rec.title, ch.text),
                        )
                    )
                    n += 1
        if not replace:
            return n
        written: int = conn.execute(_UPSERT_CHUNKS).rowcount
        conn.execute(_DELETE_EXTRA_CHUNKS)
        return written

    def flush_text_index(self) -> None:
        """Merge the GIN pending list now, so searches after an ingest do not scan it."""
        with self.db.connect() as conn:
            conn.execute("SELECT gin_clean_pending_list('medpg.documents_tsv_idx'::regclass)")
            conn.commit()


def _batches(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def ingest_file(
    db: Database,
    settings: Settings,
    path: Path,
    *,
    source: str | None = None,
    fmt: Format = "auto",
    csv_map: str | None = None,
    skip_invalid: bool = False,
    progress: bool | None = None,
    after_commit: Callable[[list[int]], None] | None = None,
) -> IngestReport:
    """Validate every row of ``path``, then upsert the valid ones batch by batch.

    Without ``skip_invalid`` a bad row raises InputError (naming file and line) before anything
    is written. ``after_commit`` is called with the ids of inserted/changed documents after
    each batch commits (background embedding uses it to enqueue work).
    """
    path = Path(path)
    source = source or default_source(path)
    report = IngestReport(file=str(path), source=source)
    started = time.perf_counter()

    # Pass 1: validate everything, so a bad row never leaves the database half-written. Records of
    # a file up to KEEP_IN_MEMORY_BYTES are kept for pass 2; a larger file is read again.
    keep = path.stat().st_size <= KEEP_IN_MEMORY_BYTES
    kept: list[Record] = []
    total = 0
    for item in read_records(path, settings, fmt, csv_map):
        if isinstance(item, RowError):
            report.skipped.append(item)
        else:
            total += 1
            if keep:
                kept.append(item)
    if report.skipped and not skip_invalid:
        shown = "\n  ".join(str(e) for e in report.skipped[:MAX_REPORTED_ERRORS])
        more = len(report.skipped) - MAX_REPORTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise InputError(
            f"{len(report.skipped)} invalid row(s) in {path}; nothing was written "
            f"(use --skip-invalid to load the valid rows):\n  {shown}{tail}"
        )
    skipped_lines = {e.line for e in report.skipped}

    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    writer = DocumentWriter(db, settings, source)
    records: Iterable[Record] = (
        kept
        if keep
        else (
            r
            for r in read_records(path, settings, fmt, csv_map)
            if isinstance(r, Record) and r.line not in skipped_lines
        )
    )

    def collect(result: BatchResult) -> None:
        report.rows += result.rows
        report.inserted += result.inserted
        report.updated += result.updated
        report.unchanged += result.unchanged
        report.chunks_written += result.chunks_written
        report.changed_document_ids.extend(result.changed_ids)
        if after_commit is not None and result.changed_ids:
            after_commit(result.changed_ids)
        bar.update(result.rows)

    # Pass 2: batches are parsed here and written by a few threads, each on its own connection;
    # the server's work (tsvector, indexes) overlaps parsing and chunking of the next batch.
    workers = settings.ingest_workers
    with (
        tqdm(total=total, unit="doc", disable=not show, desc=path.name) as bar,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medpg-ingest") as pool,
    ):
        in_flight: deque[Future[BatchResult]] = deque()
        try:
            for batch in _batches(records, settings.ingest_batch_size):
                in_flight.append(pool.submit(writer.write, batch))
                while len(in_flight) > workers:
                    collect(in_flight.popleft().result())
            while in_flight:
                collect(in_flight.popleft().result())
        except BaseException:
            for fut in in_flight:
                fut.cancel()
            raise
    if report.inserted or report.updated:
        writer.flush_text_index()
    report.seconds = time.perf_counter() - started
    log.info(
        "ingested %s: %d rows, %d inserted, %d updated, %d unchanged, %d skipped in %.1fs",
        path,
        report.rows,
        report.inserted,
        report.updated,
        report.unchanged,
        len(report.skipped),
        report.seconds,
    )
    return report


__all__ = [
    "DocumentWriter",
    "IngestReport",
    "Record",
    "RowError",
    "default_source",
    "ingest_file",
    "parse_csv_map",
    "read_records",
]
