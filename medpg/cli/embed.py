"""`medpg embed` (in-process backfill, reconcile, retry failed) and `medpg worker` (a Celery worker)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medpg.cli.common import (
    Command,
    console,
    database,
    handle_errors,
    notify,
    progress_every_option,
    settings,
)
from medpg.config import Settings
from medpg.errors import ConfigError, MedpgError

if TYPE_CHECKING:
    from medpg.db import Database

NO_BROKER = (
    "MEDPG_BROKER_URL is not set: {what} needs a broker (e.g. redis://127.0.0.1:6379/0). "
    "Without one, `medpg embed` embeds in this process."
)


def _safe_url(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


# --------------------------------------------------------------------------------------------------
# medpg embed


def embed(
    reconcile: bool = typer.Option(
        False,
        "--reconcile",
        help="Enqueue every chunk that needs a vector (pending, other model, expired lease) for the "
        "workers instead of embedding here. Needs MEDPG_BROKER_URL.",
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="First give chunks that ran out of attempts a fresh set."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, metavar="N", help="Embed at most this many chunks."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or progress lines."),
    progress_every: float = progress_every_option(),
) -> None:
    """Embed chunks that need a vector, in this process (no broker needed), or enqueue them."""
    from medpg import schema

    db = database(strict=True)
    cfg = db.settings
    schema.check(db)
    if reconcile and not cfg.broker_url:
        raise ConfigError(NO_BROKER.format(what="--reconcile"))
    if retry_failed:
        _retry_failed(db, cfg)
    if reconcile:
        _enqueue_for_workers(db, cfg)
    else:
        _embed_here(db, cfg, limit=limit, progress=not no_progress, interval=progress_every)


def _retry_failed(db: Database, cfg: Settings) -> None:
    """Give chunks that ran out of attempts a fresh set."""
    from medpg import embedding

    ids = embedding.retry_failed(db, cfg)
    console.print(f"{len(ids):,} failed chunks get {cfg.embed_max_attempts} new attempts")


def _enqueue_for_workers(db: Database, cfg: Settings) -> None:
    """`--reconcile`: enqueue every chunk that needs a vector on the broker."""
    from medpg import embedding
    from workers.tasks import BROKER_ERRORS, configure_from, send_chunks

    configure_from(cfg)
    try:
        rec = embedding.reconcile(db, cfg, lambda ids: send_chunks(ids, cfg), include_recent=True)
    except BROKER_ERRORS as exc:
        raise MedpgError(
            f"cannot reach the broker at {_safe_url(cfg.broker_url or '')}: {type(exc).__name__}: "
            f"{exc}. The chunks stay pending in PostgreSQL; run again when it is up."
        ) from None
    if rec.skipped:
        console.print("another reconcile is running; nothing done")
    else:
        console.print(f"enqueued {rec.enqueued:,} chunks on {cfg.embed_queue!r}")
    if rec.switched_model:
        console.print(f"model switch finished: search now uses {rec.switched_model}")


def _embed_here(db: Database, cfg: Settings, *, limit: int | None, progress: bool, interval: float) -> None:
    """Embed pending chunks in this process and report the rate.

    Progress: a bar on a terminal, otherwise a line every ``interval`` seconds (a log is never
    silent for minutes).
    """
    from medpg import embedding

    emb = embedding.Embedder(db, cfg)
    notify("loading the article encoder...")
    report = emb.embed_pending(limit=limit, progress=progress, progress_interval=interval)
    console.print(
        f"embedded {report.written:,} chunks in {report.seconds:.1f}s "
        f"({report.chunks_per_second:,.1f} chunks/s) with {emb.model}; "
        f"{report.failed:,} failed (see `medpg status`)",
        highlight=False,
    )
    if report.switched_model:
        console.print(f"model switch finished: search now uses {report.switched_model}")


# --------------------------------------------------------------------------------------------------
# medpg worker


def worker(
    concurrency: int = typer.Option(
        1, "--concurrency", "-c", min=1, metavar="N", help="Worker processes (each loads the model once)."
    ),
    queues: str | None = typer.Option(
        None,
        "--queues",
        "-Q",
        metavar="QUEUES",
        help="Comma-separated queues (default: the embed queue and the control queue). "
        "GPU workers can take only MEDPG_EMBED_QUEUE.",
    ),
    beat: bool = typer.Option(
        True,
        "--beat/--no-beat",
        help="Also run the periodic reconcile schedule (several beats are safe: one reconcile runs).",
    ),
    pool: str = typer.Option(
        "prefork", "--pool", "-P", metavar="POOL", help="prefork (default), solo or threads."
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", metavar="LEVEL", help="Celery's log level."),
    name: str | None = typer.Option(
        None, "--name", "-n", metavar="NAME", help="Worker node name (default medpg@host)."
    ),
) -> None:
    """Start a Celery worker that embeds chunks as they are ingested (GPU when there is one)."""
    from workers import tasks
    from workers.celery_app import configure

    cfg = settings()
    if not cfg.broker_url:
        raise ConfigError(NO_BROKER.format(what="a worker"))
    _check_database(cfg)
    celery = configure(cfg)
    tasks.use_settings(cfg)  # forked pool processes inherit it
    queue_list = queues or f"{cfg.embed_queue},{cfg.control_queue}"
    node = name or "medpg@%h"
    _announce(cfg, queue_list, concurrency, beat)
    argv = worker_argv(concurrency=concurrency, pool=pool, queues=queue_list, loglevel=loglevel, node=node)
    if beat:
        argv += ["--beat", "--schedule", str(beat_schedule_file(cfg, node))]
    celery.worker_main(argv)


def _check_database(cfg: Settings) -> None:
    """Fail here, in one line, rather than in every task; leave no connection to forked processes."""
    from medpg import schema
    from medpg.db import Database

    db = Database(cfg)
    try:
        schema.check(db)
    finally:
        db.dispose()


def _announce(cfg: Settings, queues: str, concurrency: int, beat: bool) -> None:
    # Not resolved here: probing CUDA in the parent breaks CUDA in forked pool processes.
    device = "GPU if present, else CPU" if cfg.device == "auto" else cfg.device
    console.print(
        f"worker: broker {_safe_url(cfg.broker_url or '')}, queues {queues}, concurrency {concurrency}, "
        f"device {device}, reconcile every {cfg.reconcile_interval_seconds}s "
        f"{'(beat in this worker)' if beat else '(no beat here)'}",
        highlight=False,
    )


def worker_argv(*, concurrency: int, pool: str, queues: str, loglevel: str, node: str) -> list[str]:
    """The ``celery worker`` arguments of `medpg worker` (without the beat options)."""
    return [
        "worker",
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--queues",
        queues,
        "--loglevel",
        loglevel,
        "--hostname",
        node,
    ]


def beat_schedule_file(cfg: Settings, node: str) -> Path:
    """One beat schedule file per node name (node names are unique), kept with medpg's data."""
    resolved = node.replace("%h", socket.gethostname())
    schedule = cfg.data_dir.expanduser() / "beat" / re.sub(r"[^A-Za-z0-9_.@-]", "_", resolved)
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return schedule


def register(app: typer.Typer) -> None:
    """Add the embedding commands to the top-level CLI."""
    app.command(cls=Command)(handle_errors(embed))
    app.command(cls=Command)(handle_errors(worker))
