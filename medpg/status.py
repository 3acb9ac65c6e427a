"""What is in the database: documents, chunks and where their embeddings stand.

Counts are for the configured article model: during a model switch "embedded" means "has a
staged vector of the new model", while search keeps using the active model's vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from medpg import schema
from medpg.config import Settings
from medpg.db import Database
from medpg.embedding import article_model_identity, mode_for, queued_documents, space_model
from medpg.encoders.profiles import resolve_profile

THROUGHPUT_MINUTES = 5
FAILED_SHOWN = 10


@dataclass(frozen=True)
class FailedChunk:
    """A chunk the encoder keeps failing on (ids and the error, no text)."""

    chunk_id: int
    source: str
    external_id: str
    ordinal: int
    attempts: int
    last_error: str | None
    failed_at: datetime | None


@dataclass(frozen=True)
class Status:
    database: str
    revision: str | None
    model: str
    dimension: int
    similarity: str
    active_model: str | None
    documents: int
    sources: list[tuple[str, int]]
    chunks: int
    embedded: int
    pending: int
    in_flight: int
    retrying: int
    failed: int
    searchable: int
    staged: int
    recent_writes: int
    documents_to_chunk: int = 0
    failed_chunks: list[FailedChunk] = field(default_factory=list)

    @property
    def switching(self) -> bool:
        """The configured model differs from the one search uses: new vectors are being staged."""
        return mode_for(self.model, self.active_model) == "staging"

    @property
    def chunks_per_minute(self) -> float:
        return self.recent_writes / THROUGHPUT_MINUTES


# Counts per state of medpg.chunk_state (070_embedding_state.sql) for the configured model. In
# the table, "pending" is every chunk without a current vector, in flight and retrying included.
_COUNTS = """
SELECT count(*),
       count(*) FILTER (WHERE state <> 'embedded'),
       count(*) FILTER (WHERE state = 'in_flight'),
       count(*) FILTER (WHERE state = 'retrying'),
       count(*) FILTER (WHERE state = 'failed')
FROM medpg.chunk_state(%(model)s, %(lease)s, %(max_attempts)s)
"""

_SEARCHABLE = """
SELECT count(*) FROM medpg.chunks c WHERE c.embedding IS NOT NULL AND c.embedding_model = %(active)s
"""

_STAGED = """
SELECT count(*) FROM medpg.chunk_embeddings_staging s JOIN medpg.chunks c ON c.id = s.chunk_id
WHERE s.model = %(model)s AND s.embedded_hash = c.content_hash
"""

_RECENT_WRITES = """
SELECT (SELECT count(*) FROM medpg.chunks WHERE embedded_at > now() - make_interval(mins => %(minutes)s))
     + (SELECT count(*) FROM medpg.chunk_embeddings_staging
        WHERE embedded_at > now() - make_interval(mins => %(minutes)s))
"""

_FAILED = """
SELECT s.chunk_id, d.source, d.external_id, s.ordinal, s.attempts, s.last_error, s.failed_at
FROM medpg.chunk_state(%(model)s, %(lease)s, %(max_attempts)s) s
JOIN medpg.documents d ON d.id = s.document_id
WHERE s.state = 'failed'
ORDER BY s.failed_at DESC NULLS LAST, s.chunk_id
LIMIT %(shown)s
"""


def _scalar(conn: Any, sql: str, params: dict[str, object]) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def collect_status(db: Database, settings: Settings) -> Status:
    """Gather counts, the last minutes' throughput and the failed chunks (ids and errors only)."""
    state = schema.check(db)
    profile = resolve_profile(settings)
    model = article_model_identity(settings)
    with db.connect() as conn:
        active = space_model(conn)
        params: dict[str, object] = {
            "model": model,
            "active": active,
            "lease": settings.embed_lease_seconds,
            "max_attempts": settings.embed_max_attempts,
            "minutes": THROUGHPUT_MINUTES,
            "shown": FAILED_SHOWN,
        }
        documents = _scalar(conn, "SELECT count(*) FROM medpg.documents", params)
        sources = conn.execute(
            "SELECT source, count(*) FROM medpg.documents GROUP BY source ORDER BY source"
        ).fetchall()
        row = conn.execute(_COUNTS, params).fetchone()
        searchable = _scalar(conn, _SEARCHABLE, params)
        staged = _scalar(conn, _STAGED, params)
        recent = _scalar(conn, _RECENT_WRITES, params)
        failed_rows = conn.execute(_FAILED, params).fetchall()
        to_chunk = queued_documents(conn)
    assert row is not None
    chunks, pending_n, in_flight, retrying, failed = row
    return Status(
        database=db.describe(),
        revision=state.revision,
        model=model,
        dimension=profile.dimension,
        similarity=profile.similarity,
        active_model=active,
        documents=documents,
        sources=[(s, n) for s, n in sources],
        chunks=chunks,
        embedded=chunks - pending_n,
        pending=pending_n,
        in_flight=in_flight,
        retrying=retrying,
        failed=failed,
        searchable=searchable,
        staged=staged if mode_for(model, active) == "staging" else 0,
        recent_writes=recent,
        documents_to_chunk=to_chunk,
        failed_chunks=[FailedChunk(*r) for r in failed_rows],
    )


def render_status(console: Console, st: Status) -> None:
    """Print the status as a two-column table, then the failed chunks with their errors."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("database", st.database)
    table.add_row("schema", st.revision or "-")
    table.add_row("article model", f"{st.model} ({st.dimension}-d, {st.similarity})")
    if st.active_model is None:
        table.add_row("search vectors", "none yet (run `medpg embed` or start a worker)")
    elif st.switching:
        table.add_row(
            "search vectors",
            f"{st.active_model}: {st.searchable:,} chunks (model switch in progress: "
            f"{st.staged:,} of {st.chunks:,} chunks have a new vector; search switches when all do)",
        )
    else:
        table.add_row("search vectors", f"{st.active_model}: {st.searchable:,} chunks")
    table.add_row("documents", f"{st.documents:,}")
    for source, n in st.sources:
        table.add_row(f"  {source}", f"{n:,}")
    table.add_row("chunks", f"{st.chunks:,}")
    table.add_row("  embedded", f"{st.embedded:,}")
    table.add_row("  pending", f"{st.pending:,} ({st.in_flight:,} in flight, {st.retrying:,} retrying)")
    if st.documents_to_chunk:
        table.add_row(
            "  to chunk",
            f"{st.documents_to_chunk:,} documents changed outside medpg ingest wait to be chunked "
            "(`medpg embed` or a worker's reconcile chunks them)",
        )
    table.add_row("  failed", f"{st.failed:,}")
    table.add_row("throughput", f"{st.chunks_per_minute:,.1f} chunks/min (last {THROUGHPUT_MINUTES} minutes)")
    console.print(table)
    if st.failed_chunks:
        failed = Table(title="failed chunks (retry with `medpg embed --retry-failed`)", title_justify="left")
        for column in ("chunk", "document", "attempts", "failed at", "error"):
            failed.add_column(column, overflow="fold")
        for f in st.failed_chunks:
            when = f.failed_at.strftime("%Y-%m-%d %H:%M:%S") if f.failed_at else "-"
            error = (f.last_error or "-")[:160]
            failed.add_row(
                str(f.chunk_id), f"{f.source}/{f.external_id}#{f.ordinal}", str(f.attempts), when, error
            )
        console.print(failed)
        if st.failed > len(st.failed_chunks):
            console.print(f"... and {st.failed - len(st.failed_chunks):,} more")
