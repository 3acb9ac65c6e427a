"""`medpg embed` (in-process backfill, reconcile, retry failed) and `medpg worker` (a Celery worker)."""

from __future__ import annotations

import re
import socket
import sys

import typer

from medpg.cli.common import console, database, handle_errors, settings
from medpg.errors import ConfigError, MedpgError

NO_BROKER = (
    "MEDPG_BROKER_URL is not set: {what} needs a broker (e.g. redis://127.0.0.1:6379/0). "
    "Without one, `medpg embed` embeds in this process."
)


def _safe_url(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def register(app: typer.Typer) -> None:
    """Add the embedding commands to the top-level CLI."""

    @app.command()
    @handle_errors
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
        limit: int | None = typer.Option(None, "--limit", min=1, help="Embed at most this many chunks."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ) -> None:
        """Embed chunks that need a vector, in this process (no broker needed), or enqueue them."""
        from medpg import embedding
        from medpg.db import check_schema

        cfg = settings()
        db = database()
        check_schema(db)
        if reconcile and not cfg.broker_url:
            raise ConfigError(NO_BROKER.format(what="--reconcile"))
        if retry_failed:
            ids = embedding.retry_failed(db, cfg)
            console.print(f"{len(ids):,} failed chunks get {cfg.embed_max_attempts} new attempts")
        if reconcile:
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
            return
        emb = embedding.Embedder(db, cfg)
        report = emb.embed_pending(limit=limit, progress=not no_progress and sys.stderr.isatty())
        console.print(
            f"embedded {report.written:,} chunks in {report.seconds:.1f}s "
            f"({report.chunks_per_second:,.1f} chunks/s) with {emb.model}; "
            f"{report.failed:,} failed (see `medpg status`)",
            highlight=False,
        )
        if report.switched_model:
            console.print(f"model switch finished: search now uses {report.switched_model}")

    @app.command()
    @handle_errors
    def worker(
        concurrency: int = typer.Option(
            1, "--concurrency", "-c", min=1, help="Worker processes (each loads the model once)."
        ),
        queues: str | None = typer.Option(
            None,
            "--queues",
            "-Q",
            help="Comma-separated queues (default: the embed queue and the control queue). "
            "GPU workers can take only MEDPG_EMBED_QUEUE.",
        ),
        beat: bool = typer.Option(
            True,
            "--beat/--no-beat",
            help="Also run the periodic reconcile schedule (several beats are safe: one reconcile runs).",
        ),
        pool: str = typer.Option("prefork", "--pool", "-P", help="prefork (default), solo or threads."),
        loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
        name: str | None = typer.Option(None, "--name", "-n", help="Worker node name (default medpg@host)."),
    ) -> None:
        """Start a Celery worker that embeds chunks as they are ingested (GPU when there is one)."""
        from medpg.db import check_schema
        from workers import tasks
        from workers.celery_app import configure

        cfg = settings()
        if not cfg.broker_url:
            raise ConfigError(NO_BROKER.format(what="a worker"))
        db = database()
        check_schema(db)  # fail here, in one line, rather than in every task
        db.dispose()  # no connections inherited by forked pool processes
        celery = configure(cfg)
        tasks._state["settings"] = cfg  # forked pool processes inherit it
        # Not resolved here: probing CUDA in the parent breaks CUDA in forked pool processes.
        device = "GPU if present, else CPU" if cfg.device == "auto" else cfg.device
        queue_list = queues or f"{cfg.embed_queue},{cfg.control_queue}"
        console.print(
            f"worker: broker {_safe_url(cfg.broker_url)}, queues {queue_list}, concurrency {concurrency}, "
            f"device {device}, reconcile every {cfg.reconcile_interval_seconds}s "
            f"{'(beat in this worker)' if beat else '(no beat here)'}",
            highlight=False,
        )
        argv = [
            "worker",
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--queues",
            queue_list,
            "--loglevel",
            loglevel,
            "--hostname",
            name or "medpg@%h",
        ]
        if beat:
            # One schedule file per node name (node names are unique), kept with medpg's data.
            node = (name or "medpg@%h").replace("%h", socket.gethostname())
            schedule = cfg.data_dir.expanduser() / "beat" / re.sub(r"[^A-Za-z0-9_.@-]", "_", node)
            schedule.parent.mkdir(parents=True, exist_ok=True)
            argv += ["--beat", "--schedule", str(schedule)]
        celery.worker_main(argv)
