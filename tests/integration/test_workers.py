"""Background embedding with real Celery worker processes on a real Redis (never eager mode).

Each test starts its own ``celery -A workers.celery_app worker`` subprocesses (killed at the end),
on the session's embedded PostgreSQL and the tiny random BERT. Timing is made deterministic with
PostgreSQL locks, not sleeps: a test that needs a worker "in the middle of a batch" holds
``embedding_space`` FOR UPDATE, which every vector write takes FOR SHARE first, and waits until
the worker's session is seen waiting on that lock (it has claimed and encoded, and not written).
"""

# Fixtures imported from worker_harness are redefined as test parameters, by design.
# ruff: noqa: F811

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medpg.config import Settings
from medpg.db import Database
from medpg.embedding import article_model_identity, reconcile
from medpg.encoders import load_article_encoder
from medpg.status import collect_status
from tests.conftest import DATA_DIR, truncate
from tests.fixtures.faults import FAULT_MARKER_ENV
from tests.integration.worker_harness import (
    TEST_REDIS_URL,
    WorkerPool,
    all_current,
    assert_vectors_match_text,
    backend_waiting_on_lock,
    chunk_state,
    drop_queued,
    ingest_docs,
    install_write_log,
    load_jsonl,
    queue_length,
    redis_url,  # noqa: F401 - fixture
    settings_env,
    tiny_overrides,
    vector_writes,
    wait_until,
    with_app_name,
    workers,  # noqa: F401 - fixture
)
from workers.tasks import after_commit_hook, send_chunks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTES = DATA_DIR / "mtsamples" / "notes.jsonl"
NFCORPUS = DATA_DIR / "nfcorpus" / "corpus.jsonl"
POISON = "zzpoisonzz"
FAULTY_WORKER = "tests.fixtures.faulty_worker"
TIMEOUT = 60


@pytest.fixture(scope="module")
def module_db(
    migrated_db: Callable[..., Database], tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> Iterator[Database]:
    database = migrated_db(
        "workers",
        **tiny_overrides(
            tiny_bert_dir,
            tiny_cross_encoder_dir,
            broker_url=TEST_REDIS_URL,
            embed_lease_seconds=5,
            reconcile_interval_seconds=1,
            embed_retry_backoff_seconds=0.2,
        ),
    )
    install_write_log(database)
    yield database
    database.dispose()


@pytest.fixture()
def wdb(module_db: Database, redis_url: str) -> Database:
    """Empty tables, an empty broker database, the configured model already named as the active one."""
    truncate(module_db)
    with module_db.connect() as conn:
        conn.execute("TRUNCATE public.test_vector_writes")
        conn.execute("DELETE FROM medpg.chunk_embeddings_staging")
        conn.execute(
            "UPDATE medpg.embedding_space SET model = %s", (article_model_identity(module_db.settings),)
        )
        conn.commit()
    return module_db


def notes(n: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    return load_jsonl(NOTES, limit=n, offset=offset)


def ingest(
    db: Database, docs: list[dict[str, Any]], path: Path, settings: Settings | None = None
) -> list[int]:
    """Ingest for real, with the after-commit hook that enqueues (as `medpg ingest` does with a broker)."""
    settings = settings or db.settings
    return ingest_docs(db, settings, docs, path, after_commit=after_commit_hook(db, settings))


def start(pool: WorkerPool, name: str, db: Database, settings: Settings | None = None, **kw: Any) -> Any:
    settings = settings or db.settings
    url = with_app_name(settings.database_url or "", name)
    return pool.start(name, settings.with_changes(database_url=url), **kw)


class SpaceLock:
    """Hold ``embedding_space`` FOR UPDATE: vector writes (which take it FOR SHARE) wait."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cm: Any = None

    def __enter__(self) -> SpaceLock:
        self._cm = self.db.connect()
        conn = self._cm.__enter__()
        conn.execute("SELECT 1 FROM medpg.embedding_space FOR UPDATE")
        self.conn = conn
        return self

    def release(self) -> None:
        if self._cm is not None:
            self.conn.rollback()
            self._cm.__exit__(None, None, None)
            self._cm = None

    def __exit__(self, *exc: object) -> None:
        self.release()


def written_by(log: str) -> int:
    """Vectors a worker wrote, from its task result lines."""
    return sum(int(n) for n in re.findall(r"'written': (\d+)", log))


# --------------------------------------------------------------------------------------------------


def test_cli_ingest_enqueues_and_a_worker_embeds_everything(
    wdb: Database,
    workers: WorkerPool,
    tmp_path: Path,
) -> None:
    from medpg.cli import app
    from medpg.config import get_settings

    worker = start(workers, "w1", wdb)
    path = tmp_path / "notes.jsonl"
    from tests.integration.worker_harness import write_jsonl

    write_jsonl(path, notes(15))
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["ingest", str(path), "--no-progress"], env=settings_env(wdb.settings))
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    total = chunk_state(wdb)["chunks"]
    assert total > 15
    wait_until(lambda: all_current(wdb), TIMEOUT, "the worker to embed every chunk")
    assert_vectors_match_text(wdb, load_article_encoder(wdb.settings))
    assert all(n == 1 for n in vector_writes(wdb).values()) and len(vector_writes(wdb)) == total
    assert written_by(worker.log()) == total
    status = collect_status(wdb, wdb.settings)
    assert status.embedded == total and status.pending == 0 and status.recent_writes == total


def test_worker_killed_mid_batch_loses_no_chunk(wdb: Database, workers: WorkerPool, tmp_path: Path) -> None:
    first = start(workers, "victim", wdb)
    with SpaceLock(wdb) as lock:
        ingest(wdb, notes(12), tmp_path / "n.jsonl")
        total = chunk_state(wdb)["chunks"]
        # The worker has claimed a batch, encoded it, and waits to write it.
        wait_until(lambda: backend_waiting_on_lock(wdb, "victim"), TIMEOUT, "the worker to reach its write")
        claimed = chunk_state(wdb)["claimed"]
        assert 0 < claimed <= wdb.settings.embed_claim_size
        first.kill(signal.SIGKILL)
        lock.release()
    time.sleep(0.5)
    state = chunk_state(wdb)
    assert state["current"] == 0 and state["claimed"] == claimed  # nothing half-written
    # A new worker, `medpg worker` with its defaults (prefork, beat: the periodic reconcile), takes
    # the rest of the queue, then the killed batch once its lease expires.
    start(workers, "rescuer", wdb, cli=True, beat=True)
    wait_until(lambda: all_current(wdb), TIMEOUT, "every chunk to be embedded after the kill")
    assert_vectors_match_text(wdb, load_article_encoder(wdb.settings))
    writes = vector_writes(wdb)
    assert len(writes) == total and set(writes.values()) == {1}
    assert chunk_state(wdb)["claimed"] == 0 and chunk_state(wdb)["errors"] == 0


def test_flushed_broker_is_recovered_by_reconcile(wdb: Database, workers: WorkerPool, tmp_path: Path) -> None:

    ingest(wdb, notes(10), tmp_path / "n.jsonl")
    total = chunk_state(wdb)["chunks"]
    assert queue_length(TEST_REDIS_URL, wdb.settings.embed_queue) > 0
    # All queued work is lost (this run's queues deleted: the broker flushed).
    assert drop_queued(TEST_REDIS_URL) > 0
    start(workers, "w1", wdb)
    time.sleep(2)
    assert chunk_state(wdb)["current"] == 0  # nothing to do as far as the broker knows
    from medpg.cli import app
    from medpg.config import get_settings

    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["embed", "--reconcile"], env=settings_env(wdb.settings))
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert f"enqueued {total:,} chunks" in out.output
    wait_until(lambda: all_current(wdb), TIMEOUT, "reconcile to recover every chunk")
    assert set(vector_writes(wdb).values()) == {1}


def test_document_edited_while_encoding_ends_with_the_new_texts_vector(
    wdb: Database,
    workers: WorkerPool,
    tmp_path: Path,
) -> None:
    docs = notes(2)
    start(workers, "w1", wdb)
    with SpaceLock(wdb) as lock:
        ingest(wdb, docs, tmp_path / "v1.jsonl")
        wait_until(lambda: backend_waiting_on_lock(wdb, "w1"), TIMEOUT, "the worker to encode the old text")
        with wdb.connect() as conn:
            old_hashes = {
                bytes(r[0]) for r in conn.execute("SELECT content_hash FROM medpg.chunks").fetchall()
            }
        # New titles: every chunk's encoder input, so every content hash, changes.
        ingest(wdb, [{**d, "title": "Revised " + d["title"]} for d in docs], tmp_path / "v2.jsonl")
        lock.release()
    wait_until(lambda: all_current(wdb), TIMEOUT, "the new text to be embedded")
    assert_vectors_match_text(wdb, load_article_encoder(wdb.settings))
    with wdb.connect() as conn:
        written = {bytes(r[0]) for r in conn.execute("SELECT embedded_hash FROM public.test_vector_writes")}
    assert written and not written & old_hashes  # a vector of the old text was never stored


def test_two_workers_split_2000_chunks_without_duplicate_writes(
    wdb: Database,
    workers: WorkerPool,
    tmp_path: Path,
) -> None:
    a = start(workers, "a", wdb, wait=False)
    b = start(workers, "b", wdb, wait=False)
    a.wait_ready()
    b.wait_ready()
    ingest(wdb, notes(), tmp_path / "notes.jsonl")
    offset = 0
    while chunk_state(wdb)["chunks"] < 2000:  # independent of how the chunker cuts the notes
        extra = load_jsonl(NFCORPUS, limit=100, offset=offset)
        ingest(wdb, extra, tmp_path / f"nfcorpus-{offset}.jsonl")
        offset += 100
    total = chunk_state(wdb)["chunks"]
    # Every chunk is also enqueued a second time: duplicate messages must not mean duplicate writes.
    reconcile(wdb, wdb.settings, lambda ids: send_chunks(ids, wdb.settings))
    wait_until(lambda: all_current(wdb), 180, "two workers to embed every chunk")
    writes = vector_writes(wdb)
    assert len(writes) == total and set(writes.values()) == {1}
    wait_until(lambda: written_by(a.log()) + written_by(b.log()) == total, 10, "task result logs")
    assert written_by(a.log()) > 0 and written_by(b.log()) > 0


def test_poison_chunk_is_isolated_reported_and_requeued(
    wdb: Database,
    workers: WorkerPool,
    tmp_path: Path,
) -> None:
    settings = wdb.settings
    docs = notes(10)
    docs[4] = {**docs[4], "text": f"{POISON} " + docs[4]["text"]}  # its first chunk only
    # The worker's encoder fails on the poison chunk (tests.fixtures.faulty_worker); no setting does.
    start(workers, "w1", wdb, app_module=FAULTY_WORKER, extra_env={FAULT_MARKER_ENV: POISON})
    ingest(wdb, docs, tmp_path / "n.jsonl", settings)
    total = chunk_state(wdb)["chunks"]
    max_attempts = settings.embed_max_attempts

    def poison_given_up() -> bool:
        st = collect_status(wdb, settings)
        return st.failed == 1 and st.embedded == total - 1 and st.in_flight == 0

    wait_until(poison_given_up, TIMEOUT, "the poison chunk to run out of attempts while the rest finish")
    st = collect_status(wdb, settings)
    (failed,) = st.failed_chunks
    assert failed.attempts == max_attempts and "EncodeFault" in (failed.last_error or "")
    assert failed.external_id == docs[4]["_id"] and failed.ordinal == 0

    from medpg.cli import app
    from medpg.config import get_settings

    runner = CliRunner()
    env = settings_env(settings)
    get_settings.cache_clear()
    try:
        out = runner.invoke(app, ["status"], env=env)
        assert out.exit_code == 0 and "EncodeFault" in out.output and POISON not in out.output
        out = runner.invoke(app, ["embed", "--retry-failed", "--reconcile"], env=env)
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert "1 failed chunks" in out.output and "enqueued 1 chunks" in out.output
    # Requeued: retried again up to the limit (the fault is still there), and reported again.
    wait_until(poison_given_up, TIMEOUT, "the requeued poison chunk to be retried and given up again")
    with wdb.connect() as conn:
        claims = conn.execute(
            "SELECT attempts FROM medpg.chunks WHERE id = %s", (failed.chunk_id,)
        ).fetchone()
    assert claims == (max_attempts,)
