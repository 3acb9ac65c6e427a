"""The Embedder: claim → encode → write for one process, shared by the Celery worker and `medpg embed`."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from medpg.config import Settings
from medpg.db.engine import Database
from medpg.embedding.claim import claim_chunks, release_chunks
from medpg.embedding.encode import Encoded, Failed, encode_isolating
from medpg.embedding.queue import count_claimable
from medpg.embedding.rechunk import rechunk_pending
from medpg.embedding.records import BatchResult, ClaimedChunk, EmbedReport
from medpg.embedding.space import name_first_model
from medpg.embedding.switch import finish_model_switch
from medpg.embedding.write import record_failures, write_vectors
from medpg.errors import is_transient
from medpg.progress import DEFAULT_INTERVAL, progress_bar

if TYPE_CHECKING:
    from medpg.encoders import ArticleEncoder

log = logging.getLogger(__name__)


class Embedder:
    """Claim → encode → write for one process. Not thread-safe: one batch at a time.

    The encoder is loaded on first use, or given (a benchmark, a site's own encoder, a test's
    wrapper that injects faults). The lease token names this process, so a retry after a
    transient error can take back its own leases at once.
    """

    def __init__(self, db: Database, settings: Settings, encoder: ArticleEncoder | None = None) -> None:
        self.db = db
        self.settings = settings
        self._encoder = encoder
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._ready = False
        self._cursor = 0

    @property
    def encoder(self) -> ArticleEncoder:
        if self._encoder is None:
            from medpg.encoders import load_article_encoder

            self._encoder = load_article_encoder(self.settings)
        return self._encoder

    @property
    def model(self) -> str:
        return self.encoder.model_name

    def ensure_ready(self) -> None:
        """Check the vector dimension and name the first model of an empty space (once per process)."""
        if self._ready:
            return
        with self.db.connect() as conn:
            name_first_model(conn, self.encoder.model_name, self.encoder.dimension)
            conn.commit()
        self._ready = True

    # -- the steps --------------------------------------------------------------------------------

    def claim(self, ids: Sequence[int] | None = None, limit: int | None = None) -> list[ClaimedChunk]:
        """Lease pending chunks: the given ``ids`` (those still pending and free), or the next ones.

        Without ids, claims continue after the last claimed id and wrap around once, so a backfill
        reads the table once instead of re-scanning finished rows on every claim.
        """
        limit = limit or self.settings.embed_claim_size
        with self.db.connect() as conn:
            if ids is not None:
                rows = claim_chunks(conn, self.settings, self.model, self.token, len(ids), ids=ids)
            else:
                rows = claim_chunks(conn, self.settings, self.model, self.token, limit, after=self._cursor)
                if not rows and self._cursor > 0:
                    self._cursor = 0
                    rows = claim_chunks(conn, self.settings, self.model, self.token, limit, after=0)
                if rows:
                    self._cursor = max(r.id for r in rows)
            conn.commit()
        return rows

    def release(self, chunks: Sequence[ClaimedChunk]) -> None:
        """Give leases back without a result (shutdown, or an error that is not the chunk's fault)."""
        if not chunks:
            return
        with self.db.connect() as conn:
            release_chunks(conn, chunks, self.token)
            conn.commit()

    def encode_isolating(self, chunks: Sequence[ClaimedChunk]) -> tuple[Encoded, Failed]:
        """Encode ``chunks``, each chunk the encoder fails on coming back alone with its error."""
        return encode_isolating(self.encoder, chunks)

    def write(self, encoded: Encoded, result: BatchResult) -> None:
        """Store vectors whose chunk still has the encoded hash and is still leased by us."""
        if encoded:
            with self.db.connect() as conn:
                write_vectors(conn, encoded, self.model, self.token, result)

    def record_failures(self, failures: Failed, result: BatchResult) -> None:
        """Store each failing chunk's error; it is retried until its attempts run out."""
        if failures:
            with self.db.connect() as conn:
                record_failures(conn, failures, self.settings, self.token, result)

    # -- the whole path ---------------------------------------------------------------------------

    def process(self, chunks: Sequence[ClaimedChunk]) -> BatchResult:
        """Encode claimed chunks (isolating failures), write the vectors and record the failures."""
        result = BatchResult(claimed=len(chunks))
        if not chunks:
            return result
        try:
            ok, bad = self.encode_isolating(chunks)
            self.write(ok, result)
            self.record_failures(bad, result)
        except BaseException:
            # Interrupted (database gone, shutdown): not the chunks' fault, so give the leases and
            # the attempt back if the database lets us; otherwise the leases simply expire.
            try:
                self.release(chunks)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("could not release %d leases; they expire by themselves", len(chunks))
            raise
        return result

    def embed_ids(self, ids: Sequence[int], max_rounds: int = 3) -> BatchResult:
        """Embed the given chunks if they still need it (the worker's task). Idempotent.

        Chunks whose text changed while they were encoded are claimed and encoded again at once,
        up to ``max_rounds`` times; any left over are found by the next reconcile.
        """
        self.ensure_ready()
        total = BatchResult()
        todo = sorted(set(ids))
        for _ in range(max_rounds):
            if not todo:
                break
            result = self.process(self.claim(todo))
            total.merge(result)
            todo = sorted(result.stale)
        return total

    def embed_pending(
        self,
        limit: int | None = None,
        progress: bool | None = False,
        on_batch: Callable[[BatchResult], None] | None = None,
        progress_interval: float = DEFAULT_INTERVAL,
    ) -> EmbedReport:
        """Embed every pending chunk in this process (``medpg embed``, benchmarks), then finish a switch.

        Documents queued for chunking (changed by plain SQL) are chunked first. Failing chunks are
        retried within the run until their attempts run out. ``progress`` (True or None): a bar on
        a terminal, else a line with counts and rate every ``progress_interval`` seconds on stderr.
        """
        self.ensure_ready()
        report = EmbedReport()
        started = time.perf_counter()
        report.rechunked = rechunk_pending(self.db, self.settings).documents
        total = count_claimable(self.db, self.settings, self.model)
        if limit is not None:
            total = min(total, limit)
        with progress_bar(
            total, desc="embedding", unit="chunks", enabled=progress, interval=progress_interval
        ) as bar:
            while limit is None or report.written < limit:
                size = self.settings.embed_claim_size
                if limit is not None:
                    size = min(size, limit - report.written)
                chunks = self.claim(limit=size)
                if not chunks:
                    break
                result = self.process(chunks)
                self._count(report, result)
                bar.update(len(result.written))
                if on_batch is not None:
                    on_batch(result)
        report.switched_model = finish_model_switch(self.db, self.settings, self.model)
        report.seconds = time.perf_counter() - started
        return report

    def _count(self, report: EmbedReport, result: BatchResult) -> None:
        report.written += len(result.written)
        report.failed += sum(
            1 for _, attempts, _ in result.failed if attempts >= self.settings.embed_max_attempts
        )
        report.stale += len(result.stale)
