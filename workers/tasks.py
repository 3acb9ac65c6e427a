"""Celery tasks: chunk ids in, ``medpg.embedding`` does the work. Plus the helpers that enqueue.

The article model is loaded once per worker process, on its first task. Tasks are idempotent:
a chunk that no longer needs a vector, or that another worker holds, is skipped.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import kombu.exceptions
from celery import Task, signals
from celery.utils.time import get_exponential_backoff_interval

from medpg.config import Settings, get_settings
from medpg.db.engine import Database
from medpg.embedding import Embedder, batched, reconcile, select_for_enqueue
from medpg.errors import ConfigError, MedpgError, is_transient
from workers.celery_app import EMBED_TASK, RECONCILE_TASK, app

if TYPE_CHECKING:
    from medpg.encoders import ArticleEncoder

log = logging.getLogger(__name__)

# The broker cannot be reached (publishing or asking for a queue's length).
BROKER_ERRORS = (kombu.exceptions.OperationalError, ConnectionError, OSError)

EncoderFactory = Callable[[Settings], "ArticleEncoder"]


class PermanentTaskError(MedpgError):
    """A task failed for a reason a retry cannot cure; it was not retried.

    The message names the error type (and a medpg error's own message, which never quotes text);
    other errors' messages are left out because a driver or tokenizer message may quote chunk text.
    """


class _ProcessState:
    """What this worker process builds once: its settings, database handle and embedder."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.db: Database | None = None
        self.embedder: Embedder | None = None
        self.encoder_factory: EncoderFactory | None = None
        # When this process last ran a reconcile (its own or the beat's); see reconcile_if_due.
        self.last_reconcile = time.monotonic()

    def forget_connections(self) -> None:
        """Drop the database handle and the embedder (not the settings or the encoder factory)."""
        if self.db is not None:
            self.db.dispose()
        self.db = None
        self.embedder = None


_process = _ProcessState()


def use_settings(settings: Settings) -> None:
    """Make this process's tasks use ``settings`` instead of the environment's.

    Called before the worker starts (``medpg worker``): forked pool processes inherit it. The
    database handle and embedder built from earlier settings are dropped.
    """
    _process.forget_connections()
    _process.settings = settings


def set_encoder_factory(factory: EncoderFactory | None) -> None:
    """Supply the article encoder the embed task uses: ``factory(settings)`` is called on the first task.

    ``None`` restores the default, ``medpg.encoders.load_article_encoder``. For tests and tools
    that wrap or replace the configured encoder (for example to inject encoder faults) in a real
    worker process; call it at import of the Celery app module given to ``celery -A``, or before
    the worker forks.
    """
    _process.encoder_factory = factory
    _process.embedder = None


def _settings() -> Settings:
    """This process's settings: those of its database handle (they follow the stored model)."""
    return _db().settings


def _db() -> Database:
    """The database, opened once per process with settings that follow the model its vectors were
    made with when none was chosen (``medpg.stored_model``), as the CLI does."""
    if _process.db is None:
        from medpg.stored_model import open_database

        _process.db = open_database(_process.settings or get_settings())
    return _process.db


def embedder() -> Embedder:
    """This process's Embedder; the model loads on its first use, not at import or fork."""
    if _process.embedder is None:
        factory = _process.encoder_factory
        encoder = factory(_settings()) if factory is not None else None
        _process.embedder = Embedder(_db(), _settings(), encoder=encoder)
    return _process.embedder


@signals.worker_process_init.connect
def _fresh_process(**_: object) -> None:
    # A forked pool process must not share its parent's database connections.
    _process.forget_connections()


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
# retries: transient errors only (medpg.errors.is_transient), with exponential backoff and jitter


def retry_or_fail(task: Task, exc: Exception, what: str, *, backoff_max: int) -> BaseException:
    """The exception a failed task raises: a Celery retry if ``exc`` is transient, else a permanent failure.

    A permanent failure is logged once (its type and ``what``, ids only) and not retried: the
    message is acknowledged and the task fails at once. Use as ``raise retry_or_fail(...) from exc``.
    """
    if is_transient(exc):
        countdown = get_exponential_backoff_interval(
            factor=1, retries=task.request.retries, maximum=backoff_max, full_jitter=True
        )
        retry: BaseException = task.retry(exc=exc, countdown=countdown, throw=False)
        return retry
    description = describe_error(exc)
    log.error("%s failed permanently, not retried: %s", what, description)
    return PermanentTaskError(f"{what}: {description}")


def describe_error(exc: BaseException) -> str:
    """An error as ``Type: message`` for medpg errors (their messages quote no text), else its type only."""
    name = type(exc).__name__
    if isinstance(exc, MedpgError):
        return f"{name}: {exc}"
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{name} (SQLSTATE {sqlstate})" if sqlstate else name


# --------------------------------------------------------------------------------------------------
# tasks


@app.task(name=EMBED_TASK, bind=True, acks_late=True, max_retries=20)
def embed_chunks(self: Task, chunk_ids: list[int]) -> dict[str, int]:
    """Embed these chunks if they still need it; schedule a backoff retry for chunks the encoder failed on.

    A transient error (database or broker unavailable) retries the whole task with backoff; any
    other error fails it at once, recorded with the chunk ids (encoder errors of single chunks are
    not task errors: the embedder records them on the chunk and they are retried per chunk).
    """
    try:
        result = embedder().embed_ids(chunk_ids)
        if result.retry:
            schedule_retries(result.retry, _settings(), _db())
    except Exception as exc:
        raise retry_or_fail(self, exc, f"embedding chunks {_ids(chunk_ids)}", backoff_max=300) from None
    reconcile_if_due()
    return {
        "claimed": result.claimed,
        "written": len(result.written),
        "stale": len(result.stale),
        "failed": len(result.failed),
        "lost": len(result.lost),
    }


@app.task(name=RECONCILE_TASK, bind=True, max_retries=3)
def reconcile_task(self: Task, include_recent: bool | None = None) -> dict[str, Any]:
    """Enqueue every chunk that still needs a vector (beat runs this periodically).

    Chunks enqueued less than a lease ago are left out while the embed queue holds messages
    (a backlog, not a loss); an empty queue means their messages are gone, so all are enqueued.
    """
    try:
        return _reconcile(include_recent)
    except Exception as exc:
        raise retry_or_fail(self, exc, "reconcile", backoff_max=60) from None


def reconcile_if_due() -> None:
    """Run a reconcile in this process if none ran here for MEDPG_RECONCILE_INTERVAL_SECONDS.

    The beat's reconcile messages wait behind the embed backlog when every pool process is busy
    with long tasks, and expire there; so a busy process reconciles between tasks itself. A
    worker SIGKILLed mid-batch then has its chunks enqueued again within lease + interval + one
    task. Concurrent reconciles are harmless (one takes the advisory lock, the others skip). A
    failure is logged and left to the next one: the embed task that ran it succeeded.
    """
    if time.monotonic() - _process.last_reconcile < _settings().reconcile_interval_seconds:
        return
    try:
        _reconcile(None)
    except Exception as exc:  # noqa: BLE001 - logged by type; the next due reconcile tries again
        _process.last_reconcile = time.monotonic()
        log.warning(
            "reconcile between tasks failed (%s); the next one is due in %ss",
            type(exc).__name__,
            _settings().reconcile_interval_seconds,
        )


def _reconcile(include_recent: bool | None) -> dict[str, Any]:
    settings = _settings()
    _process.last_reconcile = time.monotonic()
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


def _ids(chunk_ids: Sequence[int]) -> str:
    """Chunk ids for a log line: all of them up to a claim's worth, else the first ones and a count."""
    ids = sorted(chunk_ids)
    shown = ", ".join(str(i) for i in ids[:64])
    return f"[{shown}]" if len(ids) <= 64 else f"[{shown}, ... {len(ids)} in all]"


# --------------------------------------------------------------------------------------------------
# enqueueing (used by tasks, the CLI and the API)


def send_chunks(
    ids: Sequence[int], settings: Settings, *, countdown: float | None = None, retry: bool = True
) -> int:
    """Publish embed messages for ``ids`` to the broker of ``settings`` (groups of MEDPG_EMBED_CLAIM_SIZE).

    Returns the number of messages sent.
    """
    sent = 0
    policy = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
    # A connection to the broker of ``settings``, not one from the app's pool: a process that
    # works with several settings (tests, tools) publishes where each of them says.
    with app.connection_for_write(settings.broker_url) as conn, app.amqp.Producer(conn) as producer:
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
    "BROKER_ERRORS",
    "PermanentTaskError",
    "after_commit_hook",
    "configure_from",
    "describe_error",
    "embed_chunks",
    "embedder",
    "enqueue_documents",
    "queue_length",
    "reconcile_task",
    "retry_or_fail",
    "schedule_retries",
    "send_chunks",
    "set_encoder_factory",
    "use_settings",
]
