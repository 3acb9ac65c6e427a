"""Cut chunks again for documents that a plain-SQL writer inserted or changed.

``migrations/sql/idempotent/080_chunking.sql`` records such documents in ``medpg.chunking_queue``
(and drops their chunks that no longer reproduce the body, in the writer's transaction). Chunking
needs the tokenizer, so it happens here: ``medpg embed`` runs it before embedding and the workers'
reconcile before enqueueing. Each changed chunk gets a new content hash and so is embedded again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg

from medpg.chunking import Chunker
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.ingest.writer import replace_chunks

BATCH_DOCUMENTS = 200

# The queue rows are leased by the row lock; the documents are locked FOR SHARE, so a writer
# changing one of them waits until its chunks are written and then queues it again.
_CLAIM = """
SELECT q.document_id, d.title, d.body
FROM medpg.chunking_queue q JOIN medpg.documents d ON d.id = q.document_id
ORDER BY q.document_id
LIMIT %s
FOR UPDATE OF q SKIP LOCKED
FOR SHARE OF d SKIP LOCKED
"""


_DEQUEUE = "DELETE FROM medpg.chunking_queue WHERE document_id = ANY(%s)"
_QUEUED = "SELECT count(*) FROM medpg.chunking_queue"


@dataclass
class RechunkReport:
    documents: int = 0
    chunks_written: int = 0


@lru_cache(maxsize=4)
def _chunker(tokenizer: str, offline: bool, window: int, overlap: int, max_tokens: int) -> Chunker:
    from medpg.chunking import load_tokenizer

    return Chunker(load_tokenizer(tokenizer, offline), window, overlap, max_tokens)


def chunker_for(settings: Settings) -> Chunker:
    """The chunker of ``settings``, built once per process (loading the tokenizer takes a moment)."""
    return _chunker(
        settings.chunk_tokenizer,
        settings.hf_offline,
        settings.chunk_tokens,
        settings.chunk_overlap,
        settings.article_max_tokens,
    )


def queued_documents(conn: psycopg.Connection[Any]) -> int:
    """How many documents wait to be chunked."""
    row = conn.execute(_QUEUED).fetchone()
    return int(row[0]) if row else 0


def rechunk_pending(db: Database, settings: Settings, limit: int | None = None) -> RechunkReport:
    """Chunk every queued document (at most ``limit``), one transaction per batch; ids of chunks
    that now need a vector are found by the usual claim and reconcile."""
    report = RechunkReport()
    chunker: Chunker | None = None
    while limit is None or report.documents < limit:
        size = BATCH_DOCUMENTS if limit is None else min(BATCH_DOCUMENTS, limit - report.documents)
        with db.connect() as conn:
            rows = [(int(r[0]), str(r[1]), str(r[2])) for r in conn.execute(_CLAIM, (size,)).fetchall()]
            if not rows:
                conn.rollback()
                break
            chunker = chunker or chunker_for(settings)
            report.chunks_written += replace_chunks(conn, chunker, rows)
            conn.execute(_DEQUEUE, ([r[0] for r in rows],))
            conn.commit()
        report.documents += len(rows)
    return report
