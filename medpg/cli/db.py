"""`medpg db upgrade|downgrade|status|reindex|url|start|stop|shell`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from medpg.cli.common import (
    Command,
    Group,
    announce_first_run,
    console,
    database,
    err_console,
    handle_errors,
)
from medpg.config import get_settings
from medpg.errors import ConfigError, DatabaseError

app = typer.Typer(cls=Group, help="Create, migrate and inspect medpg's schema.", no_args_is_help=True)


@app.command(cls=Command)
@handle_errors
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from medpg import schema
    from medpg.db import migrate

    db = database()
    schema.upgrade(db, revision)
    console.print(f"database {db.describe()} is at revision {migrate.current_revision(db)}")


@app.command(cls=Command)
@handle_errors
def downgrade(
    revision: str = typer.Argument("base", help="Target revision; 'base' removes medpg's schema."),
    yes: bool = typer.Option(False, "--yes", help="Confirm: downgrading drops tables and their data."),
) -> None:
    """Undo migrations down to REVISION. Dropping tables deletes their data, so --yes is required."""
    from medpg.db import migrate

    if not yes:
        console.print("downgrade drops tables and their data; run again with --yes to confirm")
        raise typer.Exit(1)
    db = database()
    migrate.downgrade(db, revision)
    console.print(f"database {db.describe()} is at revision {migrate.current_revision(db) or 'base'}")


@app.command(cls=Command)
@handle_errors
def status() -> None:
    """Show the schema revision, the vector column and the active embedding model."""
    from medpg.db import schema_state

    db = database()
    state = schema_state(db)
    console.print(f"database:   {db.describe()}")
    console.print(f"revision:   {state.revision or 'none (run `medpg db upgrade`)'} (newest: {state.head})")
    if state.column_dimension is not None:
        console.print(f"embedding:  vector({state.column_dimension}), {state.similarity} similarity")
        console.print(f"model:      {state.active_model or 'none yet'}")


@app.command(cls=Command)
@handle_errors
def reindex(
    storage: str | None = typer.Option(
        None,
        metavar="STORAGE",
        help="vector (full precision) or halfvec (half the size); default: as recorded.",
    ),
    m: int | None = typer.Option(
        None, "--m", metavar="M", help="HNSW links per node (2-100); default: as recorded."
    ),
    ef_construction: int | None = typer.Option(
        None, "--ef-construction", metavar="EF", help="HNSW build beam (4-1000, >= 2m); default: as recorded."
    ),
    concurrently: bool = typer.Option(
        False,
        "--concurrently",
        help="Build beside the old index (CREATE INDEX CONCURRENTLY): search keeps working.",
    ),
    maintenance_work_mem: str | None = typer.Option(
        None, "--maintenance-work-mem", metavar="SIZE", help="e.g. 2GB; default: the estimated graph size."
    ),
    parallel_workers: int | None = typer.Option(
        None,
        "--parallel-workers",
        metavar="N",
        help="max_parallel_maintenance_workers; default: the server's.",
    ),
) -> None:
    """Rebuild the dense (HNSW) index, optionally with another storage or parameters, and record them."""
    from medpg import schema
    from medpg.embedding.index import STORAGES, rebuild_dense_index

    if storage is not None and storage not in STORAGES:
        raise typer.BadParameter(f"--storage must be one of {', '.join(STORAGES)}")
    db = database()
    schema.check(db)
    build = rebuild_dense_index(
        db,
        storage=storage,
        m=m,
        ef_construction=ef_construction,
        concurrently=concurrently,
        maintenance_work_mem=maintenance_work_mem,
        parallel_workers=parallel_workers,
    )
    s = build.spec
    console.print(
        f"dense index rebuilt: {s.storage} {s.opclass}, m={s.m}, ef_construction={s.ef_construction}; "
        f"{build.vectors:,} vectors in {build.seconds:.1f} s, {build.size_bytes / (1 << 20):,.1f} MB "
        f"(maintenance_work_mem {build.maintenance_work_mem})",
        highlight=False,
    )


def _embedded_only(what: str) -> None:
    if get_settings().database_url is not None:
        raise ConfigError(
            f"`medpg db {what}` manages the embedded server; MEDPG_DATABASE_URL points at another server, "
            "which medpg does not start or stop"
        )


@app.command(cls=Command)
@handle_errors
def url() -> None:
    """Print a libpq connection string (for psql or another SQL client) to medpg's database."""
    from medpg.db.embedded import libpq_url
    from medpg.db.keeper import running_keeper

    cfg = get_settings()
    if cfg.database_url is not None:
        console.print(libpq_url(cfg.database_url), highlight=False, soft_wrap=True)
        return
    kept = running_keeper(cfg.data_dir)
    console.print(
        libpq_url(str(database().url.render_as_string(hide_password=False))), highlight=False, soft_wrap=True
    )
    if kept is None:
        err_console.print(
            "note: the embedded server stops when the last medpg process exits; run `medpg db start` to keep "
            "it running for other clients",
            highlight=False,
        )


@app.command(cls=Command)
@handle_errors
def start() -> None:
    """Keep the embedded server running for other clients until `medpg db stop`."""
    from medpg.db.keeper import keeper_files, running_keeper

    _embedded_only("start")
    cfg = get_settings()
    pid = running_keeper(cfg.data_dir)
    if pid is None:
        announce_first_run(cfg)
        pid = _spawn_keeper(cfg.data_dir, cfg.embedded_database)
    _, url_file = keeper_files(cfg.data_dir)
    console.print(f"embedded PostgreSQL kept running (keeper pid {pid}); connect with:", highlight=False)
    console.print(url_file.read_text().strip(), highlight=False, soft_wrap=True)


def _spawn_keeper(data_dir: Path, database_name: str) -> int:
    from medpg.db.keeper import keeper_files, running_keeper

    pid_file, url_file = keeper_files(data_dir)
    data_dir.expanduser().mkdir(parents=True, exist_ok=True)
    log = (data_dir.expanduser() / "keeper.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medpg.db.keeper", str(data_dir.expanduser()), database_name],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,  # survives this shell and its Ctrl-C
    )
    err_console.print("starting the embedded PostgreSQL...", highlight=False)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DatabaseError(f"the embedded server could not be started; see {data_dir / 'keeper.log'}")
        if running_keeper(data_dir) == proc.pid and url_file.exists():
            return proc.pid
        time.sleep(0.1)
    proc.terminate()
    raise DatabaseError(f"the embedded server did not start within 180 s; see {data_dir / 'keeper.log'}")


@app.command(cls=Command)
@handle_errors
def stop() -> None:
    """Stop keeping the embedded server running (it stops once no medpg process uses it)."""
    from medpg.db.keeper import running_keeper

    _embedded_only("stop")
    cfg = get_settings()
    pid = running_keeper(cfg.data_dir)
    if pid is None:
        console.print("no `medpg db start` keeper is running for this data directory")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while running_keeper(cfg.data_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    pgdata = cfg.data_dir.expanduser().resolve() / "pgdata"
    while (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if (pgdata / "postmaster.pid").exists():
        console.print("keeper stopped; the server keeps running while other medpg processes use it")
    else:
        console.print("embedded PostgreSQL stopped")


@app.command(cls=Command)
@handle_errors
def shell() -> None:
    """Open psql on medpg's database (the psql that ships with the embedded server)."""
    from medpg.db.embedded import libpq_url, psql_path

    psql = psql_path()
    if psql is None:
        raise ConfigError(
            "psql was not found: install the PostgreSQL client, or use `medpg db url` with your own"
        )
    cfg = get_settings()
    target = (
        cfg.database_url
        if cfg.database_url is not None
        else database().url.render_as_string(hide_password=False)
    )
    # This process uses the embedded server while psql runs, so it stays up until psql exits.
    raise typer.Exit(subprocess.call([psql, libpq_url(str(target))]))
