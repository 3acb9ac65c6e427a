"""The ``medpg`` command: thin commands over the core."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medpg.cli import access as access_cli
from medpg.cli import db as db_cli
from medpg.cli import embed as embed_cli
from medpg.cli import learn as learn_cli
from medpg.cli import search as search_cli
from medpg.cli import serve as serve_cli
from medpg.cli.common import (
    Command,
    Group,
    console,
    database,
    handle_errors,
    progress_every_option,
    settings,
    setup_logging,
)

if TYPE_CHECKING:
    from medpg.config import Settings
    from medpg.db import Database

app = typer.Typer(
    cls=Group,
    help="medpg: hybrid search for medical text in PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db_cli.app, name="db", cls=Group)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress (never text).")) -> None:
    setup_logging(verbose)


@app.command(cls=Command)
@handle_errors
def ingest(
    path: Path = typer.Argument(..., help="BEIR corpus.jsonl (or its directory), JSON Lines or CSV file."),
    source: str | None = typer.Option(
        None, metavar="NAME", help="Source name (default: the data set or file name)."
    ),
    fmt: str = typer.Option("auto", "--format", metavar="FORMAT", help="auto, jsonl or csv."),
    csv_map: str | None = typer.Option(
        None,
        metavar="MAP",
        help="CSV columns for medpg fields, e.g. id=note_id,text=note_text,title=subject.",
    ),
    tenant: str = typer.Option(
        "default", metavar="TENANT", help="The tenant the documents belong to (row-level security)."
    ),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad rows and report each."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or progress lines."),
    progress_every: float = progress_every_option(),
) -> None:
    """Load documents: validate every row, then upsert in batches (unchanged rows are not touched).

    PATH may be a BEIR data set directory: its corpus.jsonl is read.
    """
    from medpg import schema
    from medpg.ingest import ingest_file, resolve_input

    if fmt not in ("auto", "jsonl", "csv"):
        raise typer.BadParameter("--format must be auto, jsonl or csv")
    path = resolve_input(path)  # a missing file is the user's mistake, reported before the database
    cfg = settings()
    db = database()
    schema.check(db)
    report = ingest_file(
        db,
        cfg,
        path,
        source=source,
        tenant=tenant,
        fmt=fmt,  # type: ignore[arg-type]
        csv_map=csv_map,
        skip_invalid=skip_invalid,
        progress=False if no_progress else None,
        progress_interval=progress_every,
        after_commit=_enqueue_hook(cfg, db),
    )
    for err in report.skipped:
        console.print(f"skipped {err}", highlight=False, soft_wrap=True)
    console.print(
        f"{report.file} (source {report.source!r}): {report.rows} documents — {report.inserted} new, "
        f"{report.updated} changed, {report.unchanged} unchanged, {len(report.skipped)} skipped; "
        f"{report.chunks_written} chunks written in {report.seconds:.1f}s "
        f"({report.docs_per_second:,.0f} documents/s)",
        highlight=False,
        soft_wrap=True,
    )


def _enqueue_hook(cfg: Settings, db: Database | None = None) -> Callable[[list[int]], None] | None:
    """After each committed ingest batch, enqueue its chunks for the workers (when a broker is set).

    None without MEDPG_BROKER_URL: chunks stay pending until `medpg embed`. A broker that is down
    does not fail the ingest (the hook logs a warning; reconcile enqueues the chunks later).
    """
    if not cfg.broker_url:
        return None
    from workers.tasks import after_commit_hook

    return after_commit_hook(db or database(), cfg)


@app.command(cls=Command)
@handle_errors
def status() -> None:
    """Documents, chunks and their embedding state, the model and the database."""
    from medpg.status import collect_status, render_status

    db = database()
    render_status(console, collect_status(db, settings()))


embed_cli.register(app)
search_cli.register(app)
serve_cli.register(app)
access_cli.register(app)
learn_cli.register(app)


def _add_models() -> None:
    from medpg.cli import models as models_cli

    app.add_typer(models_cli.app, name="models", cls=Group, help="Check and download the profile's models.")


_add_models()


def main() -> None:
    app()
