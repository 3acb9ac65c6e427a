"""Write validated records to PostgreSQL: one transaction per batch, several batches in parallel.

New documents go straight into ``medpg.documents`` by COPY; changed ones are copied into a
temporary table and upserted keyed by (source, external id), so an unchanged document is never
rewritten. Each written document's chunks follow in the same transaction; a chunk whose text
changed gets a new content hash, which is what marks it for re-embedding.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import sql

from medpg.chunking import Chunker, chunk_hash
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import DatabaseError
from medpg.ingest.validation import Record

Connection = psycopg.Connection[Any]

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

_EXISTING_DOCS = (
    "SELECT external_id, content_hash FROM medpg.documents WHERE source = %s AND external_id = ANY(%s)"
)

_NEXT_DOC_IDS = "SELECT nextval(pg_get_serial_sequence('medpg.documents', 'id')) FROM generate_series(1, %s)"

_COPY_NEW_DOCS = (
    "COPY medpg.documents (id, source, external_id, title, body, metadata, patient_id, document_date, "
    "content_hash) FROM STDIN"
)

_COPY_STAGE_DOCS = (
    "COPY _medpg_stage_docs (external_id, title, body, metadata, patient_id, document_date, "
    "content_hash) FROM STDIN"
)

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

# New documents' chunks go into medpg.chunks, changed documents' into the stage table first.
_COPY_CHUNKS = sql.SQL(
    "COPY {table} (document_id, ordinal, text, char_start, char_end, token_count, content_hash) FROM STDIN"
)
_CHUNKS = sql.Identifier("medpg", "chunks")
_STAGE_CHUNKS = sql.Identifier("_medpg_stage_chunks")

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

_FLUSH_TEXT_INDEX = "SELECT gin_clean_pending_list('medpg.documents_tsv_idx'::regclass)"


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
        existing = dict(conn.execute(_EXISTING_DOCS, (self.source, list(hashes))).fetchall())
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
                copy.write_row((doc_id, self.source, *_document_row(r, hashes)))
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
        conn.execute(_STAGE_SQL)
        with conn.cursor().copy(_COPY_STAGE_DOCS) as copy:
            for r in records:
                copy.write_row(_document_row(r, hashes))
        rows = conn.execute(_UPSERT_DOCS, {"source": self.source}).fetchall()
        return [(int(doc_id), str(ext), bool(was_inserted)) for doc_id, ext, was_inserted in rows]

    def _write_chunks(self, conn: Connection, docs: list[tuple[int, Record]], *, replace: bool) -> int:
        """Chunk ``docs``; new documents' chunks are copied in, changed ones' chunks upserted."""
        if not docs:
            return 0
        chunk_lists = self.chunker.chunk_many([r.title for _, r in docs], [r.body for _, r in docs])
        n = 0
        with conn.cursor().copy(_COPY_CHUNKS.format(table=_STAGE_CHUNKS if replace else _CHUNKS)) as copy:
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


def _document_row(r: Record, hashes: dict[str, bytes]) -> tuple[Any, ...]:
    """The COPY row of a document after its id and source: the columns both document COPYs share."""
    return (
        r.external_id,
        r.title,
        r.body,
        orjson.dumps(r.metadata).decode(),
        r.patient_id,
        r.document_date,
        hashes[r.external_id],
    )


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
    next. One batch at most waits behind the ``workers`` being written; the first failure cancels
    the batches not started and is raised.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medpg-ingest") as pool:
        in_flight: deque[Future[BatchResult]] = deque()
        try:
            for batch in batches(records, batch_size):
                in_flight.append(pool.submit(writer.write, batch))
                while len(in_flight) > workers:
                    on_commit(in_flight.popleft().result())
            while in_flight:
                on_commit(in_flight.popleft().result())
        except BaseException:
            for fut in in_flight:
                fut.cancel()
            raise


__all__ = ["BatchResult", "DocumentWriter", "batches", "write_in_batches"]
