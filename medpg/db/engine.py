"""Connections to PostgreSQL: the embedded server by default, or ``MEDPG_DATABASE_URL``.

medpg code works on psycopg 3 connections (COPY, server-side functions, pgvector types);
they come from one SQLAlchemy engine so Alembic and the core share a pool.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import OperationalError as SAOperationalError

from medpg.config import Settings
from medpg.errors import ConfigError, DatabaseUnavailableError

log = logging.getLogger(__name__)


def _normalise_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError/ValueError
        raise ConfigError(f"MEDPG_DATABASE_URL is not a valid database URL: {exc}") from None
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"MEDPG_DATABASE_URL must point to PostgreSQL (postgresql://...), got {url.get_backend_name()!r}"
        )
    return url.set(drivername="postgresql+psycopg")


def describe(url: URL) -> str:
    """A URL safe to print: no password; the socket directory for the embedded server."""
    host = url.host or url.query.get("host") or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"{url.username or ''}@{host}{port}/{url.database}"


class Database:
    """A handle on medpg's database; cheap to create, connects on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._url: URL | None = None
        self.embedded = settings.database_url is None

    @property
    def url(self) -> URL:
        if self._url is None:
            if self.settings.database_url is None:
                from medpg.db.embedded import start_embedded

                raw = start_embedded(self.settings.data_dir, self.settings.embedded_database)
            else:
                raw = self.settings.database_url
            self._url = _normalise_url(raw)
        return self._url

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            # Sessions in UTC: dates read back the same on any server (ingest stores naive dates as
            # UTC and refuses instants outside years 1-9999 in UTC, which another zone could shift).
            engine = create_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=10,
                # A URL that sets its own options keeps them.
                connect_args={} if "options" in self.url.query else {"options": "-c TimeZone=UTC"},
            )
            event.listen(engine, "connect", _on_connect)
            self._engine = engine
        return self._engine

    def describe(self) -> str:
        kind = "embedded" if self.embedded else "external"
        return f"{describe(self.url)} ({kind})"

    def _unreachable(self, exc: SAOperationalError | psycopg.OperationalError) -> DatabaseUnavailableError:
        cause = exc.orig if isinstance(exc, SAOperationalError) else exc
        return DatabaseUnavailableError(
            f"cannot reach PostgreSQL at {describe(self.url)}: {_first_line(cause)}. "
            "Check MEDPG_DATABASE_URL and that the server is running."
        )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A SQLAlchemy connection in a transaction (Alembic uses this)."""
        try:
            conn_cm = self.engine.begin()
            conn = conn_cm.__enter__()
        except SAOperationalError as exc:
            raise self._unreachable(exc) from None
        try:
            yield conn
        except BaseException:
            if not conn_cm.__exit__(*sys.exc_info()):
                raise
        else:
            conn_cm.__exit__(None, None, None)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A psycopg connection from the pool (not autocommit); returned to the pool after use."""
        try:
            raw = self.engine.raw_connection()
        except (SAOperationalError, psycopg.OperationalError) as exc:  # the pool hands on the driver's error
            raise self._unreachable(exc) from None
        try:
            conn = raw.driver_connection
            assert isinstance(conn, psycopg.Connection)
            # A pooled connection opened before the extension existed (the first migration, possibly
            # run by another process) has no vector adapters yet.
            if conn.adapters.types.get("vector") is None:
                register_vector_types(conn)
            yield conn
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
        finally:
            raw.close()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "unknown error"


def _on_connect(dbapi_conn: psycopg.Connection[Any], _record: object) -> None:
    register_vector_types(dbapi_conn)


def register_vector_types(conn: psycopg.Connection[Any]) -> bool:
    """Register pgvector's types on ``conn`` if the extension exists (before the first migration it does not)."""
    from pgvector.psycopg import register_vector

    prev = conn.autocommit
    try:
        conn.autocommit = True
        has = conn.execute("SELECT 1 FROM pg_type WHERE typname = 'vector'").fetchone() is not None
        if has:
            register_vector(conn)
        return has
    finally:
        conn.autocommit = prev
