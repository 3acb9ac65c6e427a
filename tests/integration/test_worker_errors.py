"""A real Celery worker retries transient errors with backoff and fails permanent ones at once.

Real worker subprocesses on real Redis (never eager mode). Transient: the database cannot be
reached, so the task is retried (``Retry in``), again and again. Permanent: the worker's model
makes vectors of another dimension than the column (SchemaMismatchError), so the task fails at
once, is logged with its chunk ids, and its message is acknowledged, not redelivered.
"""

# Fixtures imported from worker_harness are redefined as test parameters, by design.
# ruff: noqa: F811

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medpg.db import Database
from tests.conftest import DATA_DIR
from tests.integration.worker_harness import (
    TEST_REDIS_URL,
    WorkerPool,
    chunk_state,
    ingest_docs,
    load_jsonl,
    queue_length,
    redis_url,  # noqa: F401 - fixture
    tiny_overrides,
    wait_until,
    workers,  # noqa: F401 - fixture
)
from workers.tasks import send_chunks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTES = DATA_DIR / "mtsamples" / "notes.jsonl"
PERMANENT = "failed permanently, not retried"


@pytest.fixture(scope="module")
def edb(
    migrated_db: Callable[..., Database], tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> Iterator[Database]:
    database = migrated_db("worker_errors", **tiny_overrides(tiny_bert_dir, tiny_cross_encoder_dir))
    yield database
    database.dispose()


def chunk_ids(db: Database, tmp_path: Path) -> list[int]:
    ingest_docs(db, db.settings, load_jsonl(NOTES, limit=2), tmp_path / "n.jsonl")
    with db.connect() as conn:
        return [r[0] for r in conn.execute("SELECT id FROM medpg.chunks ORDER BY id").fetchall()]


def test_unreachable_database_is_retried_with_backoff(
    edb: Database, redis_url: str, workers: WorkerPool, tmp_path: Path
) -> None:
    settings = edb.settings.with_changes(
        broker_url=redis_url,
        database_url="postgresql://medpg@127.0.0.1:1/medpg?connect_timeout=2",
    )
    worker = workers.start("retrier", settings)
    send_chunks([1, 2, 3], settings)
    wait_until(lambda: worker.log().count("Retry in") >= 3, 60, "the task to be retried three times")
    log = worker.log()
    assert "DatabaseUnavailableError" in log and PERMANENT not in log


def test_permanent_error_fails_at_once_and_is_recorded(
    edb: Database, redis_url: str, workers: WorkerPool, tmp_path: Path
) -> None:
    ids = chunk_ids(edb, tmp_path)[:5]
    # The packaged MiniLM makes 384-d vectors; this database's column holds the tiny model's 32.
    settings = edb.settings.with_changes(
        broker_url=redis_url,
        model_profile="minilm",
        query_model=None,
        article_model=None,
        cross_encoder_model=None,
        embedding_dim=None,
    )
    worker = workers.start("refuser", settings)
    send_chunks(ids, settings)
    wait_until(lambda: PERMANENT in worker.log(), 60, "the task to fail permanently")
    time.sleep(3)  # time enough for a retry or a redelivery, which must not come
    log = worker.log()
    assert log.count("medpg.embed_chunks[") and "Retry in" not in log
    (line,) = [line for line in log.splitlines() if PERMANENT in line]  # one task, failed once
    assert "SchemaMismatchError" in line and re.search(r"\[" + ", ".join(map(str, ids)) + r"\]", line)
    assert queue_length(TEST_REDIS_URL, settings.embed_queue) == 0  # acknowledged, not requeued
    state = chunk_state(edb)
    assert state["claimed"] == 0 and state["current"] == 0
