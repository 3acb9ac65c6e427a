"""Write validated records to PostgreSQL: one transaction per batch, several batches in parallel.

New documents go straight into ``medpg.documents`` by COPY; changed ones are upserted keyed by
(tenant, source, external id) in one statement, so an unchanged document is never rewritten.
A writer with a ``Scope`` (the API) runs each batch under row-level security: every row goes
through the upsert (COPY cannot write a table with row-level security) and PostgreSQL refuses a
row outside the scope, or one that would overwrite a document the scope cannot see.

Each written document's chunks follow in the same transaction; a chunk whose text changed gets a
new content hash, which is what marks it for re-embedding.

When PostgreSQL refuses a batch for a row's data (validation should have caught it, but the
schema may hold constraints it cannot know), the batch is tried again row by row, each in a
savepoint that is rolled back, to name the rows it refuses; with ``skip_refused`` the batch is
then written without them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from medpg.access import DEFAULT_TENANT, Scope, check_tenant
from medpg.chunking import Chunker, chunk_hash
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import DatabaseError, DatabaseUnavailableError, InputError, MedpgError, is_transient
from medpg.ingest.validation import Record, RowError

Connection = psycopg.Connection[Any]

_EXISTING_DOCS = (
    "SELECT external_id, content_hash FROM medpg.documents "
    "WHERE tenant_id = %s AND source = %s AND external_id = ANY(%s)"
)

_NEXT_DOC_IDS = "SELECT nextval(pg_get_serial_sequence('medpg.documents', 'id')) FROM generate_series(1, %s)"

_COPY_NEW_DOCS = (
    "COPY medpg.documents (id, tenant_id, source, external_id, title, body, metadata, patient_id, "
    "document_date, content_hash) FROM STDIN"
)

_UPSERT_DOCS = """
INSERT INTO medpg.documents AS d
    (tenant_id, source, external_id, title, body, metadata, patient_id, document_date, content_hash)
SELECT %(tenant)s, %(source)s, r.external_id, r.title, r.body, r.metadata, r.patient_id, r.document_date, r.content_hash
FROM unnest(%(ids)s::text[], %(titles)s::text[], %(bodies)s::text[], %(metadata)s::jsonb[],
            %(patients)s::text[], %(dates)s::timestamptz[], %(hashes)s::bytea[])
    AS r(external_id, title, body, metadata, patient_id, document_date, content_hash)
ORDER BY r.external_id
ON CONFLICT (tenant_id, source, external_id) DO UPDATE SET
    title = EXCLUDED.title, body = EXCLUDED.body, metadata = EXCLUDED.metadata,
    patient_id = EXCLUDED.patient_id, document_date = EXCLUDED.document_date,
    content_hash = EXCLUDED.content_hash, updated_at = now()
WHERE d.content_hash IS DISTINCT FROM EXCLUDED.content_hash
RETURNING d.id, d.external_id, (xmax = 0) AS inserted
"""

# New documents' chunks are copied straight in; changed documents' chunks replace theirs through
# medpg.replace_chunks (080_chunking.sql): the one definition of which vectors survive an edit, shared
# with the re-chunking of documents changed in plain SQL.
_COPY_CHUNKS = """
COPY medpg.chunks (document_id, ordinal, text, char_start, char_end, token_count, content_hash) FROM STDIN
"""
_REPLACE_CHUNKS = """
SELECT medpg.replace_chunks(%(docs)s::bigint[], %(ordinals)s::integer[], %(texts)s::text[],
                            %(starts)s::integer[], %(ends)s::integer[], %(tokens)s::integer[],
                            %(hashes)s::bytea[])
"""

_WRITER_CHUNKS = "SELECT set_config('medpg.writer_chunks', 'on', true)"

_FLUSH_TEXT_INDEX = "SELECT gin_clean_pending_list('medpg.documents_tsv_idx'::regclass)"

# The expression of the documents.tsv generated column (0002_documents_chunks.py), computed and
# dropped: pg_column_size keeps the vector itself on the server.
_TEXT_VECTOR_SIZE = """
SELECT pg_column_size(setweight(to_tsvector('english'::regconfig, %s), 'A')
                      || setweight(to_tsvector('english'::regconfig, %s), 'B'))
"""

# SQLSTATE classes that mean "this data": data exception, integrity constraint, program limit.
# Other failures (connection, schema, permissions) are the batch's, not a row's.
_ROW_FAULT_CLASSES = ("22", "23", "54")

MAX_NAMED_ROWS = 20


@dataclass
class BatchResult:
    """What one committed batch did; ``changed_ids`` are the inserted or changed documents."""

    first_line: int
    last_line: int
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_written: int = 0
    changed_ids: list[int] = field(default_factory=list)
    #: Rows PostgreSQL refused and ``skip_refused`` left out of the batch.
    refused: list[RowError] = field(default_factory=list)


class BatchFailed(Exception):
    """A batch rolled back: its lines, the database error, and the rows found to cause it."""

    def __init__(self, first: int, last: int, cause: psycopg.Error, refused: list[RowError]) -> None:
        super().__init__(f"lines {first}-{last}")
        self.first, self.last, self.cause, self.refused = first, last, cause, refused


class DocumentWriter:
    """Writes batches of validated records, one transaction per batch, each on a pooled connection.

    ``file`` names the rows in messages; with ``skip_refused`` a row PostgreSQL refuses is left out
    of its batch (and reported in ``BatchResult.refused``) instead of failing it. Documents go to
    ``tenant``; with ``scope`` (whose tenant is then the tenant) each batch runs under row-level
    security within it.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        source: str,
        *,
        file: str = "",
        skip_refused: bool = False,
        tenant: str = DEFAULT_TENANT,
        scope: Scope | None = None,
    ) -> None:
        self.db = db
        self.source = source
        self.scope = scope
        self.tenant = check_tenant(scope.tenant if scope is not None else tenant)
        self.file = file
        self.skip_refused = skip_refused
        self.log_text = settings.log_text
        self.chunker = Chunker.from_settings(settings)

    def write(self, batch: Sequence[Record]) -> BatchResult:
        """Upsert one batch in one transaction (thread-safe: each call checks out its own connection).

        Raises BatchFailed when the batch was rolled back, naming the refused rows when a row's
        data was the cause.
        """
        first, last = batch[0].line, batch[-1].line
        try:
            return self._write_batch(batch, first, last)
        except psycopg.Error as exc:
            cause = exc
        if not _row_fault(cause):
            raise BatchFailed(first, last, cause, [])
        try:
            refused = self._find_refused(batch)
        except psycopg.Error as exc:
            raise BatchFailed(first, last, exc, []) from None
        if not refused or not self.skip_refused:
            raise BatchFailed(first, last, cause, refused)
        lines = {e.line for e in refused}
        rest = [r for r in batch if r.line not in lines]
        try:
            result = self._write_batch(rest, first, last) if rest else BatchResult(first, last)
        except psycopg.Error as exc:
            raise BatchFailed(first, last, exc, []) from None
        result.refused = refused
        return result

    def text_vector_refusal(self, title: str, body: str) -> str | None:
        """Why the tsvector of ``title`` and ``body`` cannot be stored, or None (a read-only query)."""
        with self.db.connect() as conn:
            try:
                conn.execute(_TEXT_VECTOR_SIZE, (title, body))
            except psycopg.errors.ProgramLimitExceeded as exc:
                return (
                    "fields 'title' and 'text' make a full-text vector (tsvector) over PostgreSQL's "
                    f"1 MB limit{_detail(exc, always=True)}; split the document or shorten it"
                )
            finally:
                conn.rollback()
        return None

    def _write_batch(self, batch: Sequence[Record], first: int, last: int) -> BatchResult:
        with self.db.connect() as conn:
            try:
                return self._write(conn, batch, BatchResult(first, last, rows=len(batch)), fast=True)
            except psycopg.errors.UniqueViolation:
                # Another writer inserted some of these documents since we looked: take the
                # upsert path, which treats them as existing.
                return self._write(conn, batch, BatchResult(first, last, rows=len(batch)), fast=False)

    def _find_refused(self, batch: Sequence[Record]) -> list[RowError]:
        """Each row of a failed batch written alone in a savepoint, all rolled back: those refused."""
        refused: list[RowError] = []
        with self.db.connect() as conn, conn.transaction(force_rollback=True):
            for r in batch:
                try:
                    with conn.transaction(force_rollback=True):
                        self._write(conn, [r], BatchResult(r.line, r.line, rows=1), fast=False)
                except psycopg.Error as exc:
                    if not _row_fault(exc):
                        raise
                    refused.append(RowError(self.file, r.line, _refusal(exc, self.log_text)))
        return refused

    def flush_text_index(self) -> None:
        """Merge the GIN pending list now, so searches after an ingest do not scan it."""
        with self.db.connect() as conn:
            conn.execute(_FLUSH_TEXT_INDEX)
            conn.commit()

    def _write(
        self, conn: Connection, batch: Sequence[Record], result: BatchResult, *, fast: bool
    ) -> BatchResult:
        """New records by COPY (``fast``) or all by upsert; either way their chunks, in one transaction."""
        hashes = {r.external_id: r.content_hash for r in batch}
        with conn.transaction():
            if self.scope is not None:
                self.scope.apply(conn)
                fast = False  # COPY cannot write a table with row-level security
            # This writer cuts the chunks itself: the chunking queue (080_chunking.sql) skips it.
            conn.execute(_WRITER_CHUNKS)
            new, changed = self._split_new_changed(conn, batch, hashes)
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
                docs += self._update_changed(conn, changed, hashes, result)
            result.changed_ids = [doc_id for doc_id, _ in docs]
        return result

    def _split_new_changed(
        self, conn: Connection, batch: Sequence[Record], hashes: dict[str, bytes]
    ) -> tuple[list[Record], list[Record]]:
        """The records not stored yet, and those stored with another content hash."""
        existing = dict(conn.execute(_EXISTING_DOCS, (self.tenant, self.source, list(hashes))).fetchall())
        new = [r for r in batch if r.external_id not in existing]
        changed = [
            r for r in batch if r.external_id in existing and existing[r.external_id] != hashes[r.external_id]
        ]
        return new, changed

    def _insert_new(
        self, conn: Connection, records: list[Record], hashes: dict[str, bytes]
    ) -> list[tuple[int, Record]]:
        """New documents go straight into the table by COPY, with ids taken from its sequence."""
        ids = [row[0] for row in conn.execute(_NEXT_DOC_IDS, (len(records),))]
        with conn.cursor().copy(_COPY_NEW_DOCS) as copy:
            for doc_id, r in zip(ids, records, strict=True):
                copy.write_row((doc_id, self.tenant, self.source, *_document_row(r, hashes)))
        return list(zip(ids, records, strict=True))

    def _update_changed(
        self, conn: Connection, changed: list[Record], hashes: dict[str, bytes], result: BatchResult
    ) -> list[tuple[int, Record]]:
        """Upsert ``changed`` and rewrite their chunks; the documents really written, with their ids."""
        upserted = self._upsert(conn, changed, hashes)
        # A row another writer already brought to this content comes back as no row: unchanged.
        result.unchanged += len(changed) - len(upserted)
        result.inserted += sum(1 for _, _, was_inserted in upserted if was_inserted)
        result.updated += sum(1 for _, _, was_inserted in upserted if not was_inserted)
        by_id = {r.external_id: r for r in changed}
        updated = [(doc_id, by_id[ext]) for doc_id, ext, _ in upserted]
        result.chunks_written += self._write_chunks(conn, updated, replace=True)
        return updated

    def _upsert(
        self, conn: Connection, records: list[Record], hashes: dict[str, bytes]
    ) -> list[tuple[int, str, bool]]:
        rows = conn.execute(
            _UPSERT_DOCS,
            {
                "tenant": self.tenant,
                "source": self.source,
                "ids": [r.external_id for r in records],
                "titles": [r.title for r in records],
                "bodies": [r.body for r in records],
                "metadata": [Jsonb(r.metadata, dumps=_json) for r in records],
                "patients": [r.patient_id for r in records],
                "dates": [_as_stored(r.document_date) for r in records],
                "hashes": [hashes[r.external_id] for r in records],
            },
        ).fetchall()
        return [(int(doc_id), str(ext), bool(was_inserted)) for doc_id, ext, was_inserted in rows]

    def _write_chunks(self, conn: Connection, docs: list[tuple[int, Record]], *, replace: bool) -> int:
        """Chunk ``docs``; new documents' chunks are copied in, changed ones' chunks replaced."""
        if not docs:
            return 0
        if replace or self.scope is not None:  # COPY cannot write a table with row-level security
            return replace_chunks(conn, self.chunker, [(doc_id, r.title, r.body) for doc_id, r in docs])
        chunk_lists = self.chunker.chunk_many([r.title for _, r in docs], [r.body for _, r in docs])
        n = 0
        with conn.cursor().copy(_COPY_CHUNKS) as copy:
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
        return n


def replace_chunks(conn: Connection, chunker: Chunker, docs: Sequence[tuple[int, str, str]]) -> int:
    """Cut ``docs`` (id, title, body) into chunks and replace their stored ones; returns the chunks
    inserted or changed. A chunk whose text is unchanged keeps its vector; a changed one is pending
    again (its content hash no longer equals the embedded one)."""
    arrays: dict[str, list[Any]] = {
        k: [] for k in ("docs", "ordinals", "texts", "starts", "ends", "tokens", "hashes")
    }
    chunk_lists = chunker.chunk_many([d[1] for d in docs], [d[2] for d in docs])
    for (doc_id, title, _body), chunks in zip(docs, chunk_lists, strict=True):
        for ch in chunks:
            arrays["docs"].append(doc_id)
            arrays["ordinals"].append(ch.ordinal)
            arrays["texts"].append(ch.text)
            arrays["starts"].append(ch.char_start)
            arrays["ends"].append(ch.char_end)
            arrays["tokens"].append(ch.token_count)
            arrays["hashes"].append(chunk_hash(title, ch.text))
    row = conn.execute(_REPLACE_CHUNKS, arrays).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _document_row(r: Record, hashes: dict[str, bytes]) -> tuple[Any, ...]:
    """The COPY row of a new document after its id, tenant and source."""
    return (
        r.external_id,
        r.title,
        r.body,
        orjson.dumps(r.metadata).decode(),
        r.patient_id,
        _as_stored(r.document_date),
        hashes[r.external_id],
    )


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _as_stored(date: datetime | None) -> datetime | None:
    """An offset date as the UTC instant PostgreSQL stores anyway.

    PostgreSQL refuses offsets past +-15:59:59 and fractional-second offsets that Python accepts
    ("+20:00"); the instant is the same, and the content hash keeps the date as written.
    """
    return date.astimezone(UTC) if date is not None and date.tzinfo is not None else date


def _row_fault(exc: psycopg.Error) -> bool:
    return (exc.sqlstate or "")[:2] in _ROW_FAULT_CLASSES


def _detail(exc: psycopg.Error, *, always: bool) -> str:
    """PostgreSQL's own message, when it cannot hold the row's values (or MEDPG_LOG_TEXT allows it)."""
    primary = exc.diag.message_primary
    return f" ({primary})" if primary and always else ""


def _refusal(exc: psycopg.Error, log_text: bool) -> str:
    """A row's refusal by names only: the error's kind, SQLSTATE, constraint and column.

    PostgreSQL's message itself can quote the value ("invalid input syntax ...: \"<value>\""), so it
    is shown only for program limits (sizes and index names) or when MEDPG_LOG_TEXT is on.
    """
    diag = exc.diag
    names = [f"SQLSTATE {exc.sqlstate}"]
    if diag.constraint_name:
        names.append(f"constraint {diag.constraint_name}")
    if diag.column_name:
        names.append(f"column {diag.column_name}")
    shown = log_text or (exc.sqlstate or "").startswith("54")
    return f"refused by PostgreSQL: {type(exc).__name__} ({', '.join(names)}){_detail(exc, always=shown)}"


def batches(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    batch: list[Record] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_in_batches(
    writer: DocumentWriter,
    records: Iterable[Record],
    *,
    batch_size: int,
    workers: int,
    on_commit: Callable[[BatchResult], None],
) -> None:
    """Write ``records`` batch by batch on ``workers`` threads; ``on_commit`` sees each result in order.

    Batches are cut on the caller's thread and written by the pool, each on its own connection, so
    the server's work on one batch (tsvector, indexes) overlaps the parsing and chunking of the
    next. One batch at most waits behind the ``workers`` being written.

    When a batch fails, the batches not started are cancelled, but those already being written
    (up to ``workers - 1``, later in the file than the failed one) run to their end: a commit in
    flight cannot be stopped safely. Every batch that committed, before or after the failed one,
    goes through ``on_commit``, and the error raised lists exactly the committed line ranges.
    """
    committed: list[tuple[int, BatchResult]] = []

    def commit(index: int, result: BatchResult) -> None:
        committed.append((index, result))
        on_commit(result)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medpg-ingest") as pool:
        in_flight: deque[tuple[int, Future[BatchResult]]] = deque()
        try:
            for index, batch in enumerate(batches(records, batch_size)):
                in_flight.append((index, pool.submit(writer.write, batch)))
                while len(in_flight) > workers:
                    commit(*_next_result(in_flight))
            while in_flight:
                commit(*_next_result(in_flight))
        except BatchFailed as failed:
            for _, fut in in_flight:
                fut.cancel()
            for index, fut in in_flight:
                if not fut.cancelled() and fut.exception() is None:
                    commit(index, fut.result())
            raise _batch_error(writer.file, failed, committed, writer.log_text) from None
        except BaseException:
            for _, fut in in_flight:
                fut.cancel()
            raise


def _next_result(in_flight: deque[tuple[int, Future[BatchResult]]]) -> tuple[int, BatchResult]:
    index, fut = in_flight.popleft()
    return index, fut.result()


def _batch_error(
    file: str, failed: BatchFailed, committed: list[tuple[int, BatchResult]], log_text: bool
) -> MedpgError:
    """The error for a rolled-back batch: the refused rows, what rolled back and what is committed."""
    rolled_back = f"lines {failed.first}-{failed.last} were rolled back"
    if committed:
        said = f"Committed: lines {_line_ranges(committed)}. Running the same ingest again skips them as unchanged."
    else:
        said = "Nothing was committed."
    if failed.refused:
        shown = "\n  ".join(str(e) for e in failed.refused[:MAX_NAMED_ROWS])
        more = len(failed.refused) - MAX_NAMED_ROWS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return InputError(
            f"{len(failed.refused)} row(s) of {file} refused by PostgreSQL (use --skip-invalid to leave "
            f"them out):\n  {shown}{tail}\n{rolled_back}. {said}"
        )
    if _row_fault(failed.cause):  # the data's fault, but no single row alone: still names only
        why = _refusal(failed.cause, log_text)
    else:  # connection, schema or permission errors quote no row
        why = str(failed.cause).strip().splitlines()[0] if str(failed.cause).strip() else "unknown error"
    message = f"writing {file} failed and {rolled_back}: {why}. {said}"
    if is_transient(failed.cause):
        return DatabaseUnavailableError(message)
    return DatabaseError(message)


def _line_ranges(committed: list[tuple[int, BatchResult]]) -> str:
    """Committed batches as line ranges, neighbouring batches merged: "1-2000, 3001-4000"."""
    ranges: list[list[int]] = []
    last_index = -2
    for index, result in sorted(committed, key=lambda c: c[0]):
        if index == last_index + 1:
            ranges[-1][1] = result.last_line
        else:
            ranges.append([result.first_line, result.last_line])
        last_index = index
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


__all__ = ["BatchFailed", "BatchResult", "DocumentWriter", "batches", "write_in_batches"]
