"""Embed chunks: claim pending ones, encode them with the article encoder, write the vectors back.

One implementation shared by the Celery worker (``workers.tasks``), ``medpg embed`` (in-process,
no broker) and the benchmarks. PostgreSQL is the source of truth: a chunk needs a vector when it
has none, or its vector was made from other text (``embedded_hash <> content_hash``) or by another
model. Messages in a broker only say "look at these chunks"; losing them costs time, never data.

Claiming uses ``FOR UPDATE SKIP LOCKED`` and a lease (``claimed_by`` / ``claimed_at``): several
workers split the work without waiting on each other, and a chunk whose worker died is claimable
again once its lease expires. ``attempts`` counts claims, so a chunk that keeps killing its worker
stops being retried too. A vector is written only if the chunk's content hash is still the one
that was encoded and the claim is still ours: a chunk edited meanwhile is embedded again from the
new text, and a chunk whose lease was taken over is written once, by the new holder.

Model switch (README, "Changing the article model without downtime"): ``embedding_space.model``
names the model whose vectors search
uses. While the configured article model differs from it, vectors go to
``medpg.chunk_embeddings_staging``; when every chunk has one, ``finish_model_switch`` copies them
into ``chunks.embedding`` and changes ``embedding_space.model`` in one transaction.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import psycopg

from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import DatabaseError, SchemaMismatchError

if TYPE_CHECKING:
    from medpg.encoders import ArticleEncoder

log = logging.getLogger(__name__)

Mode = Literal["direct", "staging"]

# Errors worth retrying later with the same input: the database (or the network to it) is down,
# restarting, or a transaction lost a serialization race. DatabaseError is what Database.connect
# raises when no connection can be made; its SchemaMismatchError child is a configuration error.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    DatabaseError,
)
MAX_ERROR_CHARS = 500
LEASE_EXPIRED_ERROR = "lease expired: the worker holding this chunk died or overran MEDPG_EMBED_LEASE_SECONDS"


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later retry can cure (database unavailable), False for the rest."""
    return isinstance(exc, TRANSIENT_DB_ERRORS) and not isinstance(exc, SchemaMismatchError)


class EncodeFault(RuntimeError):
    """Raised by the test-only fault injection (MEDPG_EMBED_FAULT_MARKER) in place of an encoder error."""


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class ClaimedChunk:
    """A chunk this process holds a lease on: what the article encoder reads, and the hash of it."""

    id: int
    title: str
    text: str
    content_hash: bytes


@dataclass
class BatchResult:
    """What one claim → encode → write round did (ids only: results never carry text)."""

    claimed: int = 0
    written: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)  # text changed while encoding: not written
    failed: list[tuple[int, int, str]] = field(default_factory=list)  # (id, attempts, error)
    retry: list[tuple[int, int]] = field(default_factory=list)  # failed, attempts left: (id, attempts)
    lost: list[int] = field(default_factory=list)  # lease taken over by another worker

    def merge(self, other: BatchResult) -> None:
        self.claimed += other.claimed
        self.written += other.written
        self.stale += other.stale
        self.failed += other.failed
        self.retry += other.retry
        self.lost += other.lost


@dataclass
class EmbedReport:
    """Totals of a backfill (``Embedder.embed_pending``)."""

    written: int = 0
    failed: int = 0
    stale: int = 0
    seconds: float = 0.0
    switched_model: str | None = None

    @property
    def chunks_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ReconcileReport:
    """What a reconcile pass found and did."""

    enqueued: int = 0
    skipped: bool = False  # another reconcile was running
    switched_model: str | None = None


# --------------------------------------------------------------------------------------------------
# the configured model and the embedding space


def article_model_identity(settings: Settings) -> str:
    """The name the configured article encoder writes into ``chunks.embedding_model``, without torch.

    The same ``label@fingerprint`` the loaded encoder reports as ``model_name`` (medpg.encoders.hub).
    """
    from medpg.encoders.hub import locate_model, model_identity
    from medpg.encoders.profiles import resolve_profile

    return model_identity(locate_model(resolve_profile(settings).article_model))


def space_model(conn: psycopg.Connection[Any], *, lock: str = "") -> str | None:
    """``embedding_space.model``: the model whose vectors search uses (None before the first embed)."""
    row = conn.execute(f"SELECT model FROM medpg.embedding_space {lock}").fetchone()
    if row is None:
        raise DatabaseError("medpg.embedding_space is empty: the schema is damaged; run `medpg db upgrade`")
    return row[0]


def mode_for(model: str, active: str | None) -> Mode:
    """Where vectors of ``model`` go: straight into chunks.embedding, or to staging during a switch."""
    return "direct" if active is None or active == model else "staging"


def pending_condition(mode: Mode, *, indexed: bool = False) -> str:
    """SQL condition on chunks ``c``: the chunk lacks a current vector from ``%(model)s``.

    ``indexed``: for scans in direct mode, only the hash test, which the partial index
    chunks_pending_idx answers. That is complete because vectors are written to chunks.embedding
    only by the embedding_space model (checked under a lock) and a finished switch rewrites all of
    them, so a current hash implies the current model.
    """
    if mode == "staging":
        return (
            "NOT EXISTS (SELECT 1 FROM medpg.chunk_embeddings_staging s WHERE s.chunk_id = c.id "
            "AND s.model = %(model)s AND s.embedded_hash = c.content_hash)"
        )
    if indexed:
        return "c.embedded_hash IS DISTINCT FROM c.content_hash"
    return "(c.embedded_hash IS DISTINCT FROM c.content_hash OR c.embedding_model IS DISTINCT FROM %(model)s)"


_CLAIMABLE = (
    "c.attempts < %(max_attempts)s AND (c.claimed_at IS NULL "
    "OR c.claimed_at < now() - make_interval(secs => %(lease)s) OR c.claimed_by = %(token)s)"
)


def batched(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    """``ids`` in lists of at most ``size`` (the unit of one task message)."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


# --------------------------------------------------------------------------------------------------
# the embedder


class Embedder:
    """Claim → encode → write for one process. Not thread-safe: one batch at a time.

    The encoder is loaded on first use (or given, e.g. by a benchmark). The lease token names this
    process, so a retry after a transient error can take back its own leases at once.
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

    def _params(self, **extra: object) -> dict[str, object]:
        return {
            "model": self.model,
            "max_attempts": self.settings.embed_max_attempts,
            "lease": self.settings.embed_lease_seconds,
            "token": self.token,
            **extra,
        }

    def ensure_ready(self) -> None:
        """Check the vector dimension and name the first model of an empty space (once per process)."""
        if self._ready:
            return
        from medpg.encoders import check_dimension

        enc = self.encoder
        with self.db.connect() as conn:
            row = conn.execute("SELECT dimension FROM medpg.embedding_space").fetchone()
            if row is None:
                raise DatabaseError("medpg.embedding_space is empty: run `medpg db upgrade`")
            check_dimension(enc.dimension, int(row[0]), enc.model_name)
            conn.execute("UPDATE medpg.embedding_space SET model = %s WHERE model IS NULL", (enc.model_name,))
            conn.commit()
        self._ready = True

    # -- claim ------------------------------------------------------------------------------------

    def claim(self, ids: Sequence[int] | None = None, limit: int | None = None) -> list[ClaimedChunk]:
        """Lease pending chunks: the given ``ids`` (those still pending and free), or the next ones.

        Without ids, claims continue after the last claimed id and wrap around once, so a backfill
        reads the table once instead of re-scanning finished rows on every claim.
        """
        limit = limit or self.settings.embed_claim_size
        with self.db.connect() as conn:
            mode = mode_for(self.model, space_model(conn))
            if ids is not None:
                rows = self._claim(conn, mode, "c.id = ANY(%(ids)s)", len(ids), ids=list(ids))
            else:
                rows = self._claim(conn, mode, "c.id > %(cursor)s", limit, cursor=self._cursor, scan=True)
                if not rows and self._cursor > 0:
                    self._cursor = 0
                    rows = self._claim(conn, mode, "c.id > %(cursor)s", limit, cursor=0, scan=True)
                if rows:
                    self._cursor = max(r.id for r in rows)
            conn.commit()
        return rows

    def _claim(
        self,
        conn: psycopg.Connection[Any],
        mode: Mode,
        where: str,
        limit: int,
        *,
        scan: bool = False,
        **params: object,
    ) -> list[ClaimedChunk]:
        sql = f"""
            WITH picked AS (
                SELECT c.id FROM medpg.chunks c
                WHERE {where} AND {pending_condition(mode, indexed=scan)} AND {_CLAIMABLE}
                ORDER BY c.id
                LIMIT %(limit)s
                FOR UPDATE OF c SKIP LOCKED
            )
            UPDATE medpg.chunks c
            SET claimed_by = %(token)s, claimed_at = now(), attempts = c.attempts + 1,
                last_error = CASE WHEN c.claimed_at IS NOT NULL AND c.claimed_by <> %(token)s
                                  THEN %(lease_error)s ELSE c.last_error END
            FROM picked, medpg.documents d
            WHERE c.id = picked.id AND d.id = c.document_id
            RETURNING c.id, d.title, c.text, c.content_hash
        """
        rows = conn.execute(
            sql, self._params(limit=limit, lease_error=LEASE_EXPIRED_ERROR, **params)
        ).fetchall()
        return sorted((ClaimedChunk(r[0], r[1], r[2], bytes(r[3])) for r in rows), key=lambda c: c.id)

    def release(self, chunks: Sequence[ClaimedChunk]) -> None:
        """Give leases back without a result (shutdown, or an error that is not the chunk's fault)."""
        if not chunks:
            return
        with self.db.connect() as conn:
            conn.execute(
                "UPDATE medpg.chunks SET claimed_by = NULL, claimed_at = NULL, "
                "attempts = greatest(attempts - 1, 0) WHERE id = ANY(%s) AND claimed_by = %s",
                ([c.id for c in chunks], self.token),
            )
            conn.commit()

    # -- encode -----------------------------------------------------------------------------------

    def _encode(self, chunks: Sequence[ClaimedChunk]) -> np.ndarray:
        marker = self.settings.embed_fault_marker
        if marker and any(marker in c.text for c in chunks):
            raise EncodeFault("injected encoder fault (MEDPG_EMBED_FAULT_MARKER)")
        vectors = self.encoder.encode_documents([c.title for c in chunks], [c.text for c in chunks])
        if vectors.shape != (len(chunks), self.encoder.dimension):
            raise ValueError(f"encoder returned shape {vectors.shape} for {len(chunks)} chunks")
        return vectors

    def encode_isolating(
        self, chunks: Sequence[ClaimedChunk]
    ) -> tuple[list[tuple[ClaimedChunk, np.ndarray]], list[tuple[ClaimedChunk, BaseException]]]:
        """Encode ``chunks``; if the encoder fails, split the batch until the failing chunks are alone.

        Neighbours of a bad chunk are encoded normally; each bad chunk comes back with its error.
        Non-finite output rows count as a failure of that chunk (pgvector rejects NaN).
        """
        if not chunks:
            return [], []
        try:
            vectors = self._encode(chunks)
        except Exception as exc:  # noqa: BLE001 - encoders fail with many types; isolate, then record
            if len(chunks) == 1:
                return [], [(chunks[0], exc)]
            mid = len(chunks) // 2
            ok_left, bad_left = self.encode_isolating(chunks[:mid])
            ok_right, bad_right = self.encode_isolating(chunks[mid:])
            return ok_left + ok_right, bad_left + bad_right
        finite = np.isfinite(vectors).all(axis=1)
        ok = [(c, vectors[i]) for i, c in enumerate(chunks) if finite[i]]
        bad: list[tuple[ClaimedChunk, BaseException]] = [
            (c, ValueError("the encoder produced non-finite values"))
            for i, c in enumerate(chunks)
            if not finite[i]
        ]
        return ok, bad

    # -- write ------------------------------------------------------------------------------------

    def write(self, encoded: Sequence[tuple[ClaimedChunk, np.ndarray]], result: BatchResult) -> None:
        """Store vectors whose chunk still has the encoded hash and is still leased by us.

        Takes ``embedding_space`` FOR SHARE first, so the destination (direct or staging) cannot change
        under us: a finishing model switch takes the row FOR UPDATE.
        """
        if not encoded:
            return
        ids = [c.id for c, _ in encoded]
        hashes = [c.content_hash for c, _ in encoded]
        vectors = [v for _, v in encoded]
        with self.db.connect() as conn:
            active = space_model(conn, lock="FOR SHARE")
            mode = mode_for(self.model, active)
            params = self._params(ids=ids, hashes=hashes, vectors=vectors)
            if mode == "direct":
                sql = """
                    UPDATE medpg.chunks c
                    SET embedding = v.embedding, embedding_model = %(model)s, embedded_hash = v.hash,
                        embedded_at = now(), claimed_by = NULL, claimed_at = NULL, attempts = 0,
                        last_error = NULL, failed_at = NULL
                    FROM unnest(%(ids)s::bigint[], %(hashes)s::bytea[], %(vectors)s::vector[])
                         AS v(id, hash, embedding)
                    WHERE c.id = v.id AND c.content_hash = v.hash AND c.claimed_by = %(token)s
                    RETURNING c.id
                """
            else:
                sql = """
                    WITH done AS (
                        UPDATE medpg.chunks c
                        SET claimed_by = NULL, claimed_at = NULL, attempts = 0, last_error = NULL,
                            failed_at = NULL
                        FROM unnest(%(ids)s::bigint[], %(hashes)s::bytea[], %(vectors)s::vector[])
                             AS v(id, hash, embedding)
                        WHERE c.id = v.id AND c.content_hash = v.hash AND c.claimed_by = %(token)s
                        RETURNING c.id, v.hash, v.embedding
                    )
                    INSERT INTO medpg.chunk_embeddings_staging AS s
                        (chunk_id, model, embedding, embedded_hash)
                    SELECT id, %(model)s, embedding, hash FROM done
                    ON CONFLICT (chunk_id) DO UPDATE SET model = EXCLUDED.model,
                        embedding = EXCLUDED.embedding, embedded_hash = EXCLUDED.embedded_hash,
                        embedded_at = now()
                    RETURNING s.chunk_id
                """
            written = {r[0] for r in conn.execute(sql, params).fetchall()}
            rest = [i for i in ids if i not in written]
            if rest:
                # Not written: the text changed (lease still ours: give it back, embed again) or the
                # lease was taken over (the new holder writes).
                stale = conn.execute(
                    "UPDATE medpg.chunks SET claimed_by = NULL, claimed_at = NULL "
                    "WHERE id = ANY(%s) AND claimed_by = %s RETURNING id",
                    (rest, self.token),
                ).fetchall()
                stale_ids = {r[0] for r in stale}
                result.stale += sorted(stale_ids)
                result.lost += [i for i in rest if i not in stale_ids]
            conn.commit()
        result.written += sorted(written)

    def record_failures(
        self, failures: Sequence[tuple[ClaimedChunk, BaseException]], result: BatchResult
    ) -> None:
        """Store each failing chunk's error and give its lease back; it is retried until attempts run out."""
        if not failures:
            return
        with self.db.connect() as conn:
            for chunk, exc in failures:
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:MAX_ERROR_CHARS]
                row = conn.execute(
                    "UPDATE medpg.chunks SET last_error = %s, failed_at = now(), claimed_by = NULL, "
                    "claimed_at = NULL WHERE id = %s AND claimed_by = %s AND content_hash = %s "
                    "RETURNING attempts",
                    (error, chunk.id, self.token, chunk.content_hash),
                ).fetchone()
                if row is None:  # text changed or lease lost meanwhile: not this text's failure
                    result.stale.append(chunk.id)
                    continue
                attempts = int(row[0])
                result.failed.append((chunk.id, attempts, error))
                if attempts < self.settings.embed_max_attempts:
                    result.retry.append((chunk.id, attempts))
                # The exception type only: messages from tokenizers can quote the input text.
                log.warning(
                    "chunk %d failed to embed (attempt %d of %d): %s",
                    chunk.id,
                    attempts,
                    self.settings.embed_max_attempts,
                    type(exc).__name__,
                )
            conn.commit()

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
            except TRANSIENT_DB_ERRORS:
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
        progress: bool = False,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> EmbedReport:
        """Embed every pending chunk in this process (``medpg embed``, benchmarks), then finish a switch.

        Failing chunks are retried within the run until their attempts run out.
        """
        from tqdm import tqdm

        self.ensure_ready()
        report = EmbedReport()
        started = time.perf_counter()
        total = count_claimable(self.db, self.settings, self.model)
        if limit is not None:
            total = min(total, limit)
        with tqdm(total=total, unit="chunk", disable=not progress, desc="embedding") as bar:
            while limit is None or report.written < limit:
                size = self.settings.embed_claim_size
                if limit is not None:
                    size = min(size, limit - report.written)
                chunks = self.claim(limit=size)
                if not chunks:
                    break
                result = self.process(chunks)
                report.written += len(result.written)
                report.failed += sum(
                    1 for _, attempts, _ in result.failed if attempts >= self.settings.embed_max_attempts
                )
                report.stale += len(result.stale)
                bar.update(len(result.written))
                if on_batch is not None:
                    on_batch(result)
        report.switched_model = finish_model_switch(self.db, self.settings, self.model)
        report.seconds = time.perf_counter() - started
        return report


# --------------------------------------------------------------------------------------------------
# finding work, enqueueing, reconciling


def count_claimable(db: Database, settings: Settings, model: str) -> int:
    """How many chunks could be claimed now (pending, attempts left, not leased by a live worker)."""
    with db.connect() as conn:
        mode = mode_for(model, space_model(conn))
        pending = pending_condition(mode, indexed=True)
        row = conn.execute(
            f"SELECT count(*) FROM medpg.chunks c WHERE {pending} AND {_CLAIMABLE}",
            {
                "model": model,
                "max_attempts": settings.embed_max_attempts,
                "lease": settings.embed_lease_seconds,
                "token": "",
            },
        ).fetchone()
    return int(row[0]) if row else 0


def select_for_enqueue(
    db: Database,
    settings: Settings,
    *,
    model: str | None = None,
    document_ids: Sequence[int] | None = None,
    chunk_ids: Sequence[int] | None = None,
    include_recent: bool = True,
    lock_key: str | None = None,
) -> list[int] | None:
    """Ids of claimable pending chunks, stamped ``enqueued_at = now()`` and committed.

    Commit before sending: a worker receiving the message must not find the rows locked by this
    transaction (SKIP LOCKED would skip them and the message would be wasted). ``include_recent``
    False leaves out chunks enqueued less than a lease ago (their message is probably still queued).
    ``lock_key``: take this advisory lock or return None (another reconcile is running).
    """
    model = model or article_model_identity(settings)
    where = ["TRUE"]
    params: dict[str, object] = {
        "model": model,
        "max_attempts": settings.embed_max_attempts,
        "lease": settings.embed_lease_seconds,
        "token": "",
    }
    if document_ids is not None:
        where.append("c.document_id = ANY(%(docs)s)")
        params["docs"] = list(document_ids)
    if chunk_ids is not None:
        where.append("c.id = ANY(%(ids)s)")
        params["ids"] = list(chunk_ids)
    if not include_recent:
        where.append("(c.enqueued_at IS NULL OR c.enqueued_at < now() - make_interval(secs => %(lease)s))")
    with db.connect() as conn:
        if lock_key is not None:
            got = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (lock_key,)).fetchone()
            if not got or not got[0]:
                conn.rollback()
                return None
        mode = mode_for(model, space_model(conn))
        scan = document_ids is None and chunk_ids is None
        sql = f"""
            WITH picked AS (
                SELECT c.id FROM medpg.chunks c
                WHERE {" AND ".join(where)} AND {pending_condition(mode, indexed=scan)} AND {_CLAIMABLE}
                FOR UPDATE OF c SKIP LOCKED
            )
            UPDATE medpg.chunks c SET enqueued_at = now() FROM picked WHERE c.id = picked.id
            RETURNING c.id
        """
        ids = sorted(r[0] for r in conn.execute(sql, params).fetchall())
        conn.commit()
    return ids


def reconcile(
    db: Database,
    settings: Settings,
    enqueue: Callable[[list[int]], object],
    *,
    include_recent: bool = True,
) -> ReconcileReport:
    """Find every chunk that needs a vector and is not leased, and hand its id to ``enqueue``.

    Pending, stale-model (during a switch) and lease-expired chunks are all "claimable pending".
    With ``include_recent`` False, chunks enqueued less than a lease ago are left alone (periodic
    runs with a backlog in the queue). When nothing is left during a switch, the switch finishes.
    Concurrent reconciles are harmless; an advisory lock lets one of them skip.
    """
    model = article_model_identity(settings)
    ids = select_for_enqueue(
        db, settings, model=model, include_recent=include_recent, lock_key="medpg.reconcile"
    )
    if ids is None:
        return ReconcileReport(skipped=True)
    for group in batched(ids, settings.embed_claim_size):
        enqueue(group)
    report = ReconcileReport(enqueued=len(ids))
    if not ids:
        report.switched_model = finish_model_switch(db, settings, model)
    return report


def retry_failed(db: Database, settings: Settings) -> list[int]:
    """Give chunks that ran out of attempts a fresh set; returns their ids (to embed or enqueue)."""
    model = article_model_identity(settings)
    with db.connect() as conn:
        mode = mode_for(model, space_model(conn))
        rows = conn.execute(
            f"""
            UPDATE medpg.chunks c SET attempts = 0, last_error = NULL, failed_at = NULL,
                   claimed_by = NULL, claimed_at = NULL
            WHERE c.attempts >= %(max_attempts)s AND {pending_condition(mode, indexed=True)}
            RETURNING c.id
            """,
            {"model": model, "max_attempts": settings.embed_max_attempts},
        ).fetchall()
        conn.commit()
    return sorted(r[0] for r in rows)


def finish_model_switch(db: Database, settings: Settings, model: str | None = None) -> str | None:
    """If a switch to ``model`` is complete, make its vectors the searched ones; returns the model.

    Complete: every chunk has a staging vector of ``model`` for its current text, except chunks
    that ran out of attempts (they would block the switch forever; they lose their old-model vector,
    stay listed as failed, and ``medpg embed --retry-failed`` retries them). One transaction: the
    vectors, ``embedding_model`` and ``embedding_space.model`` change together, so search sees
    either all old vectors or all new ones.
    """
    model = model or article_model_identity(settings)
    with db.connect() as conn:
        active = space_model(conn, lock="FOR UPDATE")
        if mode_for(model, active) == "direct":
            conn.rollback()
            return None
        remaining = conn.execute(
            f"SELECT count(*) FROM medpg.chunks c WHERE {pending_condition('staging')} "
            "AND c.attempts < %(max_attempts)s",
            {"model": model, "max_attempts": settings.embed_max_attempts},
        ).fetchone()
        if remaining is None or remaining[0] > 0:
            conn.rollback()
            return None
        conn.execute(
            """
            UPDATE medpg.chunks c
            SET embedding = s.embedding, embedding_model = s.model, embedded_hash = s.embedded_hash,
                embedded_at = s.embedded_at
            FROM medpg.chunk_embeddings_staging s
            WHERE s.chunk_id = c.id AND s.model = %(model)s
            """,
            {"model": model},
        )
        # Chunks without a new vector keep none: an old-model vector is in another space.
        conn.execute(
            "UPDATE medpg.chunks SET embedding = NULL, embedding_model = NULL, embedded_hash = NULL, "
            "embedded_at = NULL WHERE embedding_model IS DISTINCT FROM %(model)s "
            "AND (embedding IS NOT NULL OR embedding_model IS NOT NULL)",
            {"model": model},
        )
        conn.execute("DELETE FROM medpg.chunk_embeddings_staging")
        conn.execute("UPDATE medpg.embedding_space SET model = %s", (model,))
        conn.commit()
    log.info("model switch finished: search now uses %s (was %s)", model, active)
    return model


__all__ = [
    "TRANSIENT_DB_ERRORS",
    "BatchResult",
    "ClaimedChunk",
    "EmbedReport",
    "Embedder",
    "EncodeFault",
    "ReconcileReport",
    "article_model_identity",
    "batched",
    "count_claimable",
    "finish_model_switch",
    "is_transient",
    "mode_for",
    "pending_condition",
    "reconcile",
    "retry_failed",
    "select_for_enqueue",
    "space_model",
]
