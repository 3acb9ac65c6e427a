"""Helpers for embedding and worker tests: corpora, settings as environment, real Celery workers.

``CeleryWorker`` starts ``celery -A workers.celery_app worker`` as a real subprocess (its own
process group, settings passed as MEDPG_ environment variables, output in a log file) and always
kills it; nothing here runs tasks eagerly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medpg.config import ENV_PREFIX, Settings
from medpg.db import Database

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# settings and data


# The broker's Redis database may be shared by test runs at the same time (several checkouts, CI
# jobs): each run has queues of its own and empties only those, never the whole database.
RUN_TAG = uuid.uuid4().hex[:10]
TEST_QUEUES = {"embed_queue": f"medpg.embed.test-{RUN_TAG}", "control_queue": f"medpg.control.test-{RUN_TAG}"}


def tiny_overrides(bert: Path, cross: Path, **extra: object) -> dict[str, object]:
    """Settings for the medcpt profile on the tiny random BERT; small chunks so notes make many.

    The queues are this test run's own (``TEST_QUEUES``).
    """
    values: dict[str, object] = {
        **TEST_QUEUES,
        "model_profile": "medcpt",
        "query_model": str(bert),
        "article_model": str(bert),
        "cross_encoder_model": str(cross),
        "embedding_dim": 32,
        "chunk_tokens": 128,
        "chunk_overlap": 16,
        "embed_claim_size": 16,
        "embed_max_attempts": 3,
    }
    values.update(extra)
    return values


def load_jsonl(path: Path, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (``offset``, then at most ``limit``)."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < offset:
                continue
            if limit is not None and len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def write_jsonl(path: Path, docs: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc) + "\n")
    return path


def ingest_docs(
    db: Database,
    settings: Settings,
    docs: Sequence[dict[str, Any]],
    path: Path,
    after_commit: Callable[[list[int]], None] | None = None,
) -> list[int]:
    """Write ``docs`` to ``path`` and ingest them for real; returns changed document ids."""
    from medpg.ingest import ingest_file

    write_jsonl(path, docs)
    report = ingest_file(db, settings, path, source="test", progress=False, after_commit=after_commit)
    return report.changed_document_ids


# --------------------------------------------------------------------------------------------------
# database state


def chunk_state(db: Database) -> dict[str, int]:
    """Counts that say whether every chunk holds a vector of its current text."""
    with db.connect() as conn:
        row = conn.execute(
            """
            SELECT count(*),
                   count(*) FILTER (WHERE embedding IS NOT NULL AND embedded_hash = content_hash
                                    AND embedding_model = (SELECT model FROM medpg.embedding_space)),
                   count(*) FILTER (WHERE claimed_by IS NOT NULL),
                   count(*) FILTER (WHERE last_error IS NOT NULL)
            FROM medpg.chunks
            """
        ).fetchone()
    assert row is not None
    return {"chunks": row[0], "current": row[1], "claimed": row[2], "errors": row[3]}


def all_current(db: Database) -> bool:
    state = chunk_state(db)
    return state["chunks"] > 0 and state["current"] == state["chunks"]


def chunk_inputs(
    db: Database, ids: Sequence[int] | None = None
) -> list[tuple[int, str, str, np.ndarray | None]]:
    """(id, title, text, stored vector) of chunks, by id."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT c.id, d.title, c.text, c.embedding FROM medpg.chunks c "
            "JOIN medpg.documents d ON d.id = c.document_id "
            "WHERE %(ids)s::bigint[] IS NULL OR c.id = ANY(%(ids)s) ORDER BY c.id",
            {"ids": list(ids) if ids is not None else None},
        ).fetchall()
    return [(r[0], r[1], r[2], _array(r[3])) for r in rows]


def _array(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if hasattr(value, "to_numpy"):  # pgvector.Vector (binary results)
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


def assert_vectors_match_text(db: Database, encoder: Any, ids: Sequence[int] | None = None) -> int:
    """Every chunk's stored vector equals the encoder's output for its current (title, text)."""
    rows = chunk_inputs(db, ids)
    assert rows, "no chunks"
    expected = encoder.encode_documents([r[1] for r in rows], [r[2] for r in rows])
    for (chunk_id, _, _, stored), want in zip(rows, expected, strict=True):
        assert stored is not None, f"chunk {chunk_id} has no vector"
        np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5, err_msg=f"chunk {chunk_id}")
    return len(rows)


def install_write_log(db: Database) -> None:
    """Test instrumentation: a trigger that logs every write of a chunk vector (to count duplicates)."""
    with db.connect() as conn:
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS public.test_vector_writes (
                chunk_id bigint, embedded_hash bytea, at timestamptz DEFAULT clock_timestamp());
            CREATE OR REPLACE FUNCTION public.test_log_vector_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO public.test_vector_writes (chunk_id, embedded_hash)
                VALUES (NEW.id, NEW.embedded_hash);
                RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS test_log_vector_write ON medpg.chunks;
            CREATE TRIGGER test_log_vector_write AFTER UPDATE OF embedding ON medpg.chunks
            FOR EACH ROW WHEN (NEW.embedding IS NOT NULL) EXECUTE FUNCTION public.test_log_vector_write();
            """
        )
        conn.commit()


def vector_writes(db: Database) -> dict[int, int]:
    """chunk id -> how many times its vector was written (needs ``install_write_log``)."""
    with db.connect() as conn:
        rows = conn.execute("SELECT chunk_id, count(*) FROM public.test_vector_writes GROUP BY 1").fetchall()
    return {r[0]: r[1] for r in rows}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def backend_waiting_on_lock(db: Database, application: str) -> bool:
    """True when a session named ``application`` waits for a heavyweight lock."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
            (application,),
        ).fetchone()
    return bool(row and row[0])


# --------------------------------------------------------------------------------------------------
# settings for subprocesses


def settings_env(settings: Settings, **extra: object) -> dict[str, str]:
    """MEDPG_ environment variables that rebuild ``settings`` (non-default fields) in a subprocess."""
    env: dict[str, str] = {}
    values = settings.model_dump(exclude_defaults=True)
    values.update(extra)
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[ENV_PREFIX + name.upper()] = str(value)
    return env


def subprocess_env(settings: Settings, **extra: object) -> dict[str, str]:
    """The test process's environment without MEDPG_ variables, plus ``settings`` and quiet defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    env.update(settings_env(settings, **extra))
    return env


# --------------------------------------------------------------------------------------------------
# a real Celery worker


class CeleryWorker:
    """``celery -A workers.celery_app worker`` in a subprocess; always stopped by ``stop()``.

    ``app_module`` names another Celery app module for ``-A``: ``tests.fixtures.faulty_worker``
    runs medpg's tasks with an encoder that fails on marked chunks (MEDPGTEST_FAULT_MARKER).
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        log_dir: Path,
        *,
        queues: Sequence[str] | None = None,
        beat: bool = False,
        pool: str = "solo",
        cli: bool = False,
        extra_env: dict[str, str] | None = None,
        app_module: str = "workers.celery_app",
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.settings = settings
        queues = queues or [settings.embed_queue, settings.control_queue]
        bin_dir = str(Path(sys.executable).parent)
        if cli and app_module != "workers.celery_app":
            raise ValueError("`medpg worker` runs medpg's own app module; app_module needs cli=False")
        if cli:  # `medpg worker` with its defaults (prefork, concurrency 1, beat unless told not to)
            medpg = shutil.which("medpg", path=bin_dir) or "medpg"
            self.argv = [medpg, "worker", "-n", f"{name}@%h", "-Q", ",".join(queues)]
            self.argv += [] if beat else ["--no-beat"]
        else:
            celery = shutil.which("celery", path=bin_dir) or "celery"
            self.argv = [
                celery,
                "-A",
                app_module,
                "worker",
                "-P",
                pool,
                "-c",
                "1",
                "-Q",
                ",".join(queues),
                "-n",
                f"{name}@%h",
                "--loglevel",
                "INFO",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ]
            if beat:
                self.argv += ["-B", "-s", str(log_dir / f"{name}-beat-schedule")]
        self.env = subprocess_env(settings)
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, wait: bool = True, timeout: float = 60) -> CeleryWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log()[self._offset :]:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} not ready after {timeout}s:\n{self.log()[-4000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's whole process group (pool children, embedded beat)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)


class WorkerPool:
    """Starts workers for one test and stops every one of them at the end (use as a fixture)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: list[CeleryWorker] = []

    def start(self, name: str, settings: Settings, **kwargs: Any) -> CeleryWorker:
        wait = kwargs.pop("wait", True)
        worker = CeleryWorker(name, settings, self.log_dir, **kwargs)
        self.workers.append(worker)
        return worker.start(wait=wait)

    def stop_all(self) -> None:
        for worker in self.workers:
            try:
                worker.stop(timeout=5)
            finally:
                worker.kill(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in self.workers)


# --------------------------------------------------------------------------------------------------
# fixtures (import them into a test module to use them)

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def drop_queued(redis_url: str) -> int:
    """Delete this run's queues (``TEST_QUEUES``) from the broker: all their messages are lost."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{RUN_TAG}*"))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """The broker's Redis database, with this run's queues emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(
            f"Redis is not reachable at {TEST_REDIS_URL} ({exc}); start redis-server or set TEST_REDIS_URL"
        )
    finally:
        client.close()
    drop_queued(TEST_REDIS_URL)
    yield TEST_REDIS_URL
    drop_queued(TEST_REDIS_URL)


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    """Start Celery workers with ``workers.start(...)``; all are killed when the test ends."""
    pool = WorkerPool(tmp_path / "workers")
    try:
        yield pool
    finally:
        pool.stop_all()
        print(pool.logs())  # pytest shows it only for a failed test


def queue_length(redis_url: str, queue: str) -> int:
    """Messages waiting in a Celery queue on Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


def with_app_name(url: str, name: str) -> str:
    """The database URL with ``application_name`` set, so a test can find that process's sessions."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"
