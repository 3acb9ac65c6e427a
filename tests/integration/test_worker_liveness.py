"""Liveness with one busy worker: a SIGKILLed worker's chunks come back while a backlog is queued.

Tasks here take longer than the reconcile interval, so the beat's reconcile messages expire behind
the embed backlog; the worker reconciles between tasks itself (workers.tasks.reconcile_if_due).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medpg.config import Settings
from medpg.db import Database
from medpg.embedding import article_model_identity
from tests.conftest import DATA_DIR, truncate
from tests.fixtures.slow_worker import ENCODE_SECONDS_ENV
from tests.integration.worker_harness import (
    TEST_REDIS_URL,
    WorkerPool,
    ingest_docs,
    load_jsonl,
    redis_url,  # noqa: F401 - fixture
    tiny_overrides,
    wait_until,
    with_app_name,
    workers,  # noqa: F401 - fixture
)
from workers.tasks import after_commit_hook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTES = DATA_DIR / "mtsamples" / "notes.jsonl"
SLOW_WORKER = "tests.fixtures.slow_worker"
LEASE, INTERVAL, ENCODE = 5, 2, 2.5


@pytest.fixture()
def ldb(
    migrated_db: Callable[..., Database], tiny_bert_dir: Path, tiny_cross_encoder_dir: Path, redis_url: str  # noqa: F811
) -> Iterator[Database]:
    database = migrated_db(
        "liveness",
        **tiny_overrides(
            tiny_bert_dir,
            tiny_cross_encoder_dir,
            broker_url=TEST_REDIS_URL,
            embed_lease_seconds=LEASE,
            reconcile_interval_seconds=INTERVAL,
            embed_claim_size=4,
        ),
    )
    truncate(database)
    with database.connect() as conn:
        conn.execute(
            "UPDATE medpg.embedding_space SET model = %s", (article_model_identity(database.settings),)
        )
        conn.commit()
    yield database
    database.dispose()


def _start(pool: WorkerPool, name: str, db: Database, **kw: object) -> object:
    settings: Settings = db.settings.with_changes(
        database_url=with_app_name(db.settings.database_url or "", name)
    )
    return pool.start(
        name, settings, app_module=SLOW_WORKER, extra_env={ENCODE_SECONDS_ENV: str(ENCODE)}, **kw
    )


def _scalar(db: Database, sql: str, *args: object) -> object:
    with db.connect() as conn:
        row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def test_a_killed_workers_chunks_return_while_a_backlog_waits(
    ldb: Database,
    workers: WorkerPool,  # noqa: F811
    tmp_path: Path,
) -> None:
    ingest_docs(
        ldb,
        ldb.settings,
        load_jsonl(NOTES, limit=12),
        tmp_path / "notes.jsonl",
        after_commit=after_commit_hook(ldb, ldb.settings),
    )
    total = _scalar(ldb, "SELECT count(*) FROM medpg.chunks")
    assert isinstance(total, int) and total >= 40  # a backlog of at least 10 tasks of 2.5 s

    victim = _start(workers, "victim", ldb, beat=False)
    wait_until(
        lambda: _scalar(ldb, "SELECT count(*) FROM medpg.chunks WHERE claimed_by IS NOT NULL") == 4,
        60,
        "the first claim",
    )
    held = _scalar(ldb, "SELECT array_agg(id) FROM medpg.chunks WHERE claimed_by IS NOT NULL")
    victim.kill(signal.SIGKILL)  # type: ignore[attr-defined]
    killed_at = _scalar(ldb, "SELECT clock_timestamp()")
    started = time.monotonic()

    _start(workers, "survivor", ldb, beat=True)
    # Re-enqueued (a new enqueued_at) once the lease expired, by a reconcile between tasks.
    wait_until(
        lambda: (
            _scalar(
                ldb,
                "SELECT count(*) FROM medpg.chunks WHERE id = ANY(%s) AND enqueued_at > %s",
                held,
                killed_at,
            )
            == 4
        ),
        60,
        "the killed worker's chunks to be enqueued again",
    )
    back_after = time.monotonic() - started
    remaining = _scalar(
        ldb, "SELECT count(*) FROM medpg.chunks WHERE embedded_hash IS DISTINCT FROM content_hash"
    )
    # Within lease + interval + one task (and the survivor's start), while the backlog still waits.
    assert back_after < LEASE + INTERVAL + ENCODE + 15, back_after
    assert isinstance(remaining, int) and remaining > 8
    wait_until(
        lambda: (
            _scalar(
                ldb,
                "SELECT count(*) FROM medpg.chunks WHERE id = ANY(%s) AND embedded_hash = content_hash",
                held,
            )
            == 4
        ),
        120,
        "the killed worker's chunks to be embedded",
    )
