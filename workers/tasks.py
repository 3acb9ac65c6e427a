"""Celery tasks: chunk ids in, ``medpg.embedding`` does the work. Plus the helpers that enqueue.

The article model is loaded once per worker process, on its first task. Tasks are idempotent:
a chunk that no longer needs a vector, or that another worker holds, is skipped.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import kombu.exceptions
import psycopg
from celery import signals

from medpg.config import Settings, get_settings
from medpg.db.engine import Database
from medpg.embedding import Embedder, batched, reconcile, select_for_enqueue
from medpg.errors import ConfigError, DatabaseError, SchemaMismatchError
from workers.celery_app import EMBED_TASK, RECONCILE_TASK, app

log = logging.getLogger(__name__)

# Retried with exponential backoff: the database or the broker is unavailable for now.
TRANSIENT = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    DatabaseError,
    kombu.exceptions.OperationalError,
    ConnectionError,
)
NOT_TRANSIENT = (SchemaMismatchError,)
BROKER_ERRORS = (kombu.exceptions.OperationalError, ConnectionError, OSError)

_state: dict[str, Any] = {}


def _settings() -> Settings:
    settings = _state.get("settings")
    if settings is None:
        settings = _state["settings"] = get_settings()
    return settings


def _db() -> Database:
    db = _state.get("db")
    if db is None:
        db = _state["db"] = Database(_settings())
    return db


def embedder() -> Embedder:
    """This process's Embedder; the model loads on its first use, not at import or fork."""
    emb = _state.get("embedder")
    if emb is None:
        emb = _state["embedder"] = Embedder(_db(), _settings())
    return emb


@signals.worker_process_init.connect
def _fresh_process(**_: object) -> None:
    # A forked pool process must not share its parent's database connections.
    db = _state.pop("db", None)
    if db is not None:
        db.dispose()
    _state.pop("embedder", None)


@signals.worker_init.connect
def _require_broker(**_: object) -> None:
    # Without this Celery would fall back to amqp://localhost. Celery logs and ignores exceptions
    # raised by signal receivers, so exit explicitly.
    if not app.conf.broker_url:
        error = ConfigError(
            "MEDPG_BROKER_URL is not set: a worker needs a broker (e.g. redis://127.0.0.1:6379/0). "
            "Without one, run `medpg embed` to embed in-process."
        )
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code)


# --------------------------------------------------------------------------------------------------
# tasks


@app.task(
    name=EMBED_TASK,
    acks_late=True,
    autoretry_for=TRANSIENT,
    dont_autoretry_for=NOT_TRANSIENT,
    retry_backoff=1,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=20,
)
def embed_chunks(chunk_ids: list[int]) -> dict[str, int]:
    """Embed these chunks if they still need it; schedule a backoff retry for chunks the encoder failed on."""
    result = embedder().embed_ids(chunk_ids)
    if result.retry:
        schedule_retries(result.retry, _settings(), _db())
    return {
        "claimed": result.claimed,
        "written": len(result.written),
        "stale": len(result.stale),
        "failed": len(result.failed),
        "lost": len(result.lost),
    }


@app.task(
    name=RECONCILE_TASK,
    autoretry_for=TRANSIENT,
    dont_autoretry_for=NOT_TRANSIENT,
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=3,
)
def reconcile_task(include_recent: bool | None = None) -> dict[str, Any]:
    """Enqueue every chunk that still needs a vector (beat runs this periodically).

    Chunks enqueued less than a lease ago are left out while the embed queue holds messages
    (a backlog, not a loss); an empty queue means their messages are gone, so all are enqueued.
    """
    settings = _settings()
    if include_recent is None:
        depth = queue_length(settings.embed_queue)
        include_recent = depth == 0
    report = reconcile(_db(), settings, lambda ids: send_chunks(ids, settings), include_recent=include_recent)
    if report.enqueued or report.switched_model:
        log.info(
            "reconcile: enqueued %d chunks%s",
            report.enqueued,
            f"; switched to {report.switched_model}" if report.switched_model else "",
        )
    return {"enqueued": report.enqueued, "skipped": report.skipped, "switched_model": report.switched_model}


# --------------------------------------------------------------------------------------------------
# enqueueing (used by tasks, the CLI and the API)


def send_chunks(
    ids: Sequence[int], settings: Settings, *, countdown: float | None = None, retry: bool = True
) -> int:
    """Publish embed messages for ``ids`` (groups of MEDPG_EMBED_CLAIM_SIZE); returns messages sent."""
    sent = 0
    policy = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
    with app.producer_or_acquire() as producer:
        for group in batched(list(ids), settings.embed_claim_size):
            embed_chunks.apply_async(
                (group,),
                producer=producer,
                queue=settings.embed_queue,
                countdown=countdown,
                retry=retry,
                retry_policy=policy,
            )
            sent += 1
    return sent


def schedule_retries(retry: Sequence[tuple[int, int]], settings: Settings, db: Database) -> None:
    """Re-enqueue chunks the encoder failed on after base * 2^(attempts-1) seconds (at most a lease)."""
    by_attempts: dict[int, list[int]] = defaultdict(list)
    for chunk_id, attempts in retry:
        by_attempts[attempts].append(chunk_id)
    for attempts, ids in sorted(by_attempts.items()):
        delay = min(settings.embed_retry_backoff_seconds * 2 ** (attempts - 1), settings.embed_lease_seconds)
        marked = select_for_enqueue(db, settings, chunk_ids=ids)
        if marked:
            send_chunks(marked, settings, countdown=delay)


def queue_length(queue: str) -> int | None:
    """Messages waiting in ``queue`` (None if the broker cannot say)."""
    try:
        with app.connection_for_read() as conn:
            try:
                _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
            except conn.channel_errors:
                return 0  # Redis deletes an empty list: the queue does not exist
            return int(count)
    except BROKER_ERRORS:
        return None


def enqueue_documents(db: Database, settings: Settings, document_ids: Sequence[int]) -> int:
    """Enqueue the chunks of these documents that need a vector; returns how many.

    Called after the documents' transaction committed. Raises a broker error if publishing fails;
    the chunks stay pending in PostgreSQL and reconcile finds them.
    """
    ids = select_for_enqueue(db, settings, document_ids=document_ids)
    if ids:
        send_chunks(ids, settings, retry=False)
    return len(ids or [])


def after_commit_hook(db: Database, settings: Settings) -> Callable[[list[int]], None]:
    """An ``ingest_file(after_commit=...)`` callback that enqueues changed documents' chunks.

    A broker that is down does not fail the ingest: the data is committed, the chunks are pending,
    and one warning (counts only) says reconcile will pick them up. After a failure the hook stops
    trying for the rest of this ingest (each attempt to reach a dead broker costs seconds).
    """
    configure_from(settings)
    broker_down = False

    def hook(document_ids: list[int]) -> None:
        nonlocal broker_down
        if broker_down:
            return
        try:
            enqueue_documents(db, settings, document_ids)
        except BROKER_ERRORS as exc:
            broker_down = True
            log.warning(
                "could not reach the broker (%s); documents are saved and their chunks will be enqueued "
                "by the periodic reconcile or `medpg embed --reconcile`",
                type(exc).__name__,
            )

    return hook


def configure_from(settings: Settings) -> None:
    """Point this process's Celery app at ``settings`` (its broker, queues)."""
    from workers.celery_app import configure

    configure(settings)


__all__ = [
    "after_commit_hook",
    "embed_chunks",
    "embedder",
    "enqueue_documents",
    "queue_length",
    "reconcile_task",
    "schedule_retries",
    "send_chunks",
]
