"""medpg.embedding in-process (no broker): claim → encode → write on the embedded PostgreSQL, tiny models.

The worker tests (test_workers*.py) run the same code in real Celery workers; these pin down the
rules themselves: current text only, leases, failure isolation, retries, the model switch.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from medpg.config import Settings
from medpg.db import Database
from medpg.embedding import (
    Embedder,
    article_model_identity,
    finish_model_switch,
    reconcile,
    retry_failed,
    select_for_enqueue,
)
from medpg.encoders import clear_encoder_cache, load_article_encoder
from medpg.status import collect_status, render_status
from tests.conftest import DATA_DIR, truncate
from tests.fixtures.faults import FaultyArticleEncoder
from tests.integration.worker_harness import (
    all_current,
    assert_vectors_match_text,
    chunk_inputs,
    chunk_state,
    ingest_docs,
    load_jsonl,
    settings_env,
    tiny_overrides,
)

pytestmark = pytest.mark.integration

NOTES = DATA_DIR / "mtsamples" / "notes.jsonl"
POISON = "zzpoisonzz"


@pytest.fixture(scope="module")
def tdb(
    migrated_db: Callable[..., Database], tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> Iterator[Database]:
    database = migrated_db("embedding", **tiny_overrides(tiny_bert_dir, tiny_cross_encoder_dir))
    yield database
    database.dispose()


@pytest.fixture()
def fresh(tdb: Database) -> Database:
    """The module's database, emptied, with no embedding model named yet."""
    truncate(tdb)
    with tdb.connect() as conn:
        conn.execute("UPDATE medpg.embedding_space SET model = NULL")
        conn.execute("DELETE FROM medpg.chunk_embeddings_staging")
        conn.commit()
    return tdb


def notes(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return load_jsonl(NOTES, limit=n, offset=offset)


def with_settings(db: Database, **overrides: object) -> Settings:
    return db.settings.with_changes(**overrides)


def faulty(settings: Settings) -> FaultyArticleEncoder:
    """The configured article encoder, failing on chunks that contain POISON."""
    return FaultyArticleEncoder(load_article_encoder(settings), POISON)


def test_backfill_embeds_every_chunk_from_its_current_text(fresh: Database, tmp_path: Path) -> None:
    ingest_docs(fresh, fresh.settings, notes(20), tmp_path / "notes.jsonl")
    state = chunk_state(fresh)
    assert state["chunks"] > 20  # notes are longer than a 128-token chunk
    emb = Embedder(fresh, fresh.settings)
    report = emb.embed_pending()
    assert report.written == state["chunks"] and report.failed == 0
    assert all_current(fresh)
    with fresh.connect() as conn:
        model = conn.execute("SELECT model FROM medpg.embedding_space").fetchone()[0]  # type: ignore[index]
    assert model == emb.encoder.model_name == article_model_identity(fresh.settings)
    assert_vectors_match_text(fresh, emb.encoder)
    # Nothing left: a second run claims nothing and writes nothing.
    assert Embedder(fresh, fresh.settings).embed_pending().written == 0


def test_vector_of_old_text_is_never_written(fresh: Database, tmp_path: Path) -> None:
    docs = notes(3)
    ingest_docs(fresh, fresh.settings, docs, tmp_path / "v1.jsonl")
    emb = Embedder(fresh, fresh.settings)
    emb.ensure_ready()
    claimed = emb.claim(limit=1000)
    ids = [c.id for c in claimed]
    assert len(ids) == chunk_state(fresh)["chunks"]
    # Edited after the chunks were claimed, before the vectors are written: the title is part of
    # every chunk's encoder input, so every chunk's content hash changes.
    edited = [{**d, "title": d["title"] + " (revised)"} for d in docs]
    ingest_docs(fresh, fresh.settings, edited, tmp_path / "v2.jsonl")
    result = emb.process(claimed)  # encodes the old text
    assert result.written == [] and sorted(result.stale) == ids
    assert chunk_state(fresh)["current"] == 0 and chunk_state(fresh)["claimed"] == 0
    again = emb.embed_ids(ids)
    assert sorted(again.written) == ids
    assert all_current(fresh)
    assert_vectors_match_text(fresh, emb.encoder)


def test_embed_ids_reembeds_text_changed_during_the_task(fresh: Database, tmp_path: Path) -> None:
    """The worker task's path: a stale write is followed by a new claim of the new text in the same task."""
    docs = notes(2)
    ingest_docs(fresh, fresh.settings, docs, tmp_path / "v1.jsonl")
    ids = [row[0] for row in chunk_inputs(fresh)]
    edited = [{**d, "title": "new " + d["title"]} for d in docs]
    inner = load_article_encoder(fresh.settings)
    calls: list[int] = []

    class EditDuringFirstEncode:
        """The configured encoder; the documents are edited while its first batch is encoded."""

        model_name, dimension, similarity = inner.model_name, inner.dimension, inner.similarity

        def encode_documents(self, titles: Any, texts: Any) -> np.ndarray:
            vectors = inner.encode_documents(titles, texts)
            if not calls:
                ingest_docs(fresh, fresh.settings, edited, tmp_path / "v2.jsonl")
            calls.append(len(texts))
            return vectors

    emb = Embedder(fresh, fresh.settings, encoder=EditDuringFirstEncode())  # type: ignore[arg-type]
    result = emb.embed_ids(ids)
    assert len(calls) == 2 and sorted(result.stale) == ids and sorted(result.written) == ids
    assert_vectors_match_text(fresh, emb.encoder)


def test_leases_split_work_and_expire(fresh: Database, tmp_path: Path) -> None:
    ingest_docs(fresh, fresh.settings, notes(6), tmp_path / "n.jsonl")
    a, b = Embedder(fresh, fresh.settings), Embedder(fresh, fresh.settings)
    a.ensure_ready()
    first = a.claim(limit=5)
    second = b.claim(limit=5)
    assert first and second and {c.id for c in first}.isdisjoint({c.id for c in second})
    assert b.claim([c.id for c in first]) == []  # leased by a live worker
    # a's lease expires (its worker hangs or died): b takes the chunks over and writes them once.
    with fresh.connect() as conn:
        conn.execute(
            "UPDATE medpg.chunks SET claimed_at = now() - interval '1 hour' WHERE id = ANY(%s)",
            ([c.id for c in first],),
        )
        conn.commit()
    taken = b.claim([c.id for c in first])
    assert [c.id for c in taken] == [c.id for c in first]
    late = a.process(first)  # the old holder finishes late: not written
    assert late.written == [] and sorted(late.lost) == [c.id for c in first]
    assert sorted(b.process(taken).written) == [c.id for c in first]
    with fresh.connect() as conn:
        errors = conn.execute(
            "SELECT count(*) FROM medpg.chunks WHERE id = ANY(%s) AND attempts = 0 AND last_error IS NULL",
            ([c.id for c in first],),
        ).fetchone()
    assert errors is not None and errors[0] == len(first)


def test_poison_chunk_is_isolated_recorded_and_retried_up_to_the_limit(
    fresh: Database, tmp_path: Path
) -> None:
    docs = notes(8)
    docs[3] = {**docs[3], "text": f"{POISON} " + docs[3]["text"]}  # in its first chunk only
    settings = with_settings(fresh, embed_claim_size=64)
    ingest_docs(fresh, settings, docs, tmp_path / "n.jsonl")
    total = chunk_state(fresh)["chunks"]
    report = Embedder(fresh, settings, encoder=faulty(settings)).embed_pending()
    assert report.failed == 1 and report.written == total - 1
    with fresh.connect() as conn:
        rows = conn.execute(
            "SELECT id, attempts, last_error, failed_at IS NOT NULL, embedding IS NULL FROM medpg.chunks "
            "WHERE last_error IS NOT NULL"
        ).fetchall()
    assert len(rows) == 1
    poison_id, attempts, error, has_failed_at, no_vector = rows[0]
    assert attempts == settings.embed_max_attempts and has_failed_at and no_vector
    assert "EncodeFault" in error and POISON not in error  # no text in the recorded error
    status = collect_status(fresh, settings)
    assert status.failed == 1 and status.failed_chunks[0].chunk_id == poison_id
    assert status.embedded == total - 1 and status.pending == 1
    # Out of attempts: no longer claimed or enqueued, until --retry-failed.
    assert Embedder(fresh, settings, encoder=faulty(settings)).embed_pending().written == 0
    assert select_for_enqueue(fresh, settings) == []
    assert retry_failed(fresh, settings) == [poison_id]
    fixed = settings  # the real encoder
    assert Embedder(fresh, fixed).embed_pending().written == 1
    assert all_current(fresh) and collect_status(fresh, fixed).failed == 0


def test_reconcile_enqueues_pending_and_expired_leases_not_live_ones(fresh: Database, tmp_path: Path) -> None:
    ingest_docs(fresh, fresh.settings, notes(5), tmp_path / "n.jsonl")
    total = chunk_state(fresh)["chunks"]
    emb = Embedder(fresh, fresh.settings)
    emb.ensure_ready()
    held = emb.claim(limit=4)
    sent: list[list[int]] = []
    report = reconcile(fresh, fresh.settings, sent.append)
    flat = sorted(i for group in sent for i in group)
    assert report.enqueued == total - len(held) == len(flat)
    assert all(len(g) <= fresh.settings.embed_claim_size for g in sent)
    assert not set(flat) & {c.id for c in held}
    # Recently enqueued chunks are left alone unless asked for (a backlog, not a loss) ...
    sent.clear()
    assert reconcile(fresh, fresh.settings, sent.append, include_recent=False).enqueued == 0
    # ... and a lease that expired makes its chunks eligible again.
    with fresh.connect() as conn:
        conn.execute(
            "UPDATE medpg.chunks SET claimed_at = now() - interval '1 hour' WHERE claimed_by IS NOT NULL"
        )
        conn.commit()
    sent.clear()
    assert reconcile(fresh, fresh.settings, sent.append, include_recent=False).enqueued == len(held)


def _perturbed_copy(src: Path, dst: Path) -> Path:
    """Another tiny model: same architecture and tokenizer, different weights (a new model identity)."""
    import torch
    from transformers import BertModel

    shutil.copytree(src, dst)
    model = BertModel.from_pretrained(str(src))
    torch.manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(str(dst))
    return dst


def test_model_switch_keeps_old_vectors_searchable_until_the_new_ones_are_complete(
    fresh: Database, tmp_path: Path, tiny_bert_dir: Path
) -> None:
    ingest_docs(fresh, fresh.settings, notes(6), tmp_path / "n.jsonl")
    total = chunk_state(fresh)["chunks"]
    old = Embedder(fresh, fresh.settings)
    old.embed_pending()
    old_model = old.encoder.model_name
    new_dir = _perturbed_copy(tiny_bert_dir, tmp_path / "tiny-bert-v2")
    new_settings = with_settings(fresh, article_model=str(new_dir), query_model=str(new_dir))
    new = Embedder(fresh, new_settings)
    assert new.model != old_model

    status = collect_status(fresh, new_settings)
    assert status.active_model == old_model and status.switching and status.pending == total

    half = new.embed_pending(limit=total // 2)
    assert half.written == total // 2 and half.switched_model is None
    # Search still sees only old-model vectors, all of them, for every chunk.
    assert all_current(fresh)
    with fresh.connect() as conn:
        models = conn.execute("SELECT DISTINCT embedding_model FROM medpg.chunks").fetchall()
        staged = conn.execute("SELECT count(*) FROM medpg.chunk_embeddings_staging").fetchone()
    assert models == [(old_model,)] and staged is not None and staged[0] == total // 2
    assert collect_status(fresh, new_settings).staged == total // 2
    # An old-model worker still running keeps writing old vectors (it is not confused by the switch).
    assert old.embed_pending().written == 0

    rest = new.embed_pending()
    assert rest.written == total - total // 2 and rest.switched_model == new.model
    assert all_current(fresh)
    with fresh.connect() as conn:
        models = conn.execute("SELECT DISTINCT embedding_model FROM medpg.chunks").fetchall()
        active = conn.execute("SELECT model FROM medpg.embedding_space").fetchone()
        staged = conn.execute("SELECT count(*) FROM medpg.chunk_embeddings_staging").fetchone()
    assert models == [(new.model,)] and active == (new.model,) and staged == (0,)
    assert_vectors_match_text(fresh, new.encoder)
    assert finish_model_switch(fresh, new_settings) is None  # nothing to do any more
    clear_encoder_cache()


def test_cli_embed_status_and_retry_failed(fresh: Database, tmp_path: Path) -> None:
    from medpg.cli import app
    from medpg.config import get_settings

    docs = notes(4)
    docs[1] = {**docs[1], "text": f"{POISON} " + docs[1]["text"]}
    settings = fresh.settings
    ingest_docs(fresh, settings, docs, tmp_path / "n.jsonl")
    runner = CliRunner()
    env = settings_env(settings)

    def run(*args: str, **extra: str) -> Any:
        get_settings.cache_clear()
        try:
            result = runner.invoke(app, list(args), env={**env, **extra})
        finally:
            get_settings.cache_clear()
        return result

    # The encoder fails on the poison chunk: a wrapped encoder, since the CLI has no fault switch.
    assert Embedder(fresh, settings, encoder=faulty(settings)).embed_pending().failed == 1
    out = run("status")
    assert out.exit_code == 0, out.output
    assert "failed" in out.output and "EncodeFault" in out.output and POISON not in out.output
    out = run("embed", "--retry-failed", "--no-progress")
    assert out.exit_code == 0, out.output
    assert "1 failed chunks get" in out.output and "embedded 1 chunks" in out.output
    assert all_current(fresh)
    out = run("embed", "--reconcile")  # no broker configured: a clear error, not a traceback
    assert out.exit_code != 0 and "MEDPG_BROKER_URL" in out.output


def test_status_renders_without_text(fresh: Database, tmp_path: Path) -> None:
    from rich.console import Console

    ingest_docs(fresh, fresh.settings, notes(2), tmp_path / "n.jsonl")
    Embedder(fresh, fresh.settings).embed_pending()
    console = Console(record=True, width=120)
    render_status(console, collect_status(fresh, fresh.settings))
    text = console.export_text()
    assert "embedded" in text and "chunks/min" in text


def test_encoder_is_shared_with_search_side_loading(fresh: Database) -> None:
    """The worker's encoder is the cached article encoder of the settings (one load per process)."""
    emb = Embedder(fresh, fresh.settings)
    assert emb.encoder is load_article_encoder(fresh.settings)


def test_ingest_with_the_broker_down_commits_and_leaves_chunks_for_reconcile(
    fresh: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.tasks import after_commit_hook

    # Nothing listens on port 1; three ingest batches, so three commits that call the hook.
    settings = with_settings(fresh, broker_url="redis://127.0.0.1:1/15", ingest_batch_size=2)
    docs = notes(6)
    hook = after_commit_hook(fresh, settings)
    with caplog.at_level("WARNING"):
        changed = ingest_docs(fresh, settings, docs, tmp_path / "n.jsonl", after_commit=hook)
    assert len(changed) == 6 and chunk_state(fresh)["current"] == 0
    warnings = [r for r in caplog.records if "could not reach the broker" in r.getMessage()]
    assert len(warnings) == 1  # one warning, then no more attempts during this ingest
    assert not any(d["text"][:40] in caplog.text for d in docs)  # no document text in the log
    sent: list[list[int]] = []
    assert (
        reconcile(fresh, settings, sent.append, include_recent=True).enqueued == chunk_state(fresh)["chunks"]
    )


def test_migration_0003_downgrades_and_upgrades(
    migrated_db: Callable[..., Database], tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> None:
    from medpg.db import migrate

    db = migrated_db("emb_migration", **tiny_overrides(tiny_bert_dir, tiny_cross_encoder_dir))

    def has_state() -> tuple[bool, bool]:
        with db.connect() as conn:
            table = conn.execute(
                "SELECT to_regclass('medpg.chunk_embeddings_staging') IS NOT NULL"
            ).fetchone()
            column = conn.execute(
                "SELECT count(*) = 1 FROM information_schema.columns WHERE table_schema = 'medpg' "
                "AND table_name = 'chunks' AND column_name = 'enqueued_at'"
            ).fetchone()
        return bool(table and table[0]), bool(column and column[0])

    assert has_state() == (True, True)
    migrate.downgrade(db, "0002")
    assert has_state() == (False, False)
    migrate.upgrade(db)
    assert has_state() == (True, True)
    db.dispose()


def test_interrupted_batch_gives_leases_and_attempts_back(fresh: Database, tmp_path: Path) -> None:
    """The database connection dies between encode and write: the error propagates (the task retries)
    and the chunks are free again with their attempt not counted."""
    import threading

    import psycopg

    ingest_docs(fresh, fresh.settings, notes(2), tmp_path / "n.jsonl")
    emb = Embedder(fresh, fresh.settings)
    emb.ensure_ready()
    claimed = emb.claim(limit=1000)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            emb.process(claimed)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    with fresh.connect() as lock:
        lock.execute("SELECT 1 FROM medpg.embedding_space FOR UPDATE")  # the write will wait here
        worker = threading.Thread(target=run)
        worker.start()
        find = (
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%embedding_space%FOR SHARE%'"
        )
        row = None
        deadline = time.monotonic() + 30
        while row is None and time.monotonic() < deadline:
            # A fresh transaction each time: pg_stat_activity is a per-transaction snapshot.
            with fresh.connect() as probe:
                row = probe.execute(find).fetchone()
            time.sleep(0.05)
        assert row is not None, "the write never waited for the lock"
        lock.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        worker.join(30)
        lock.rollback()
    assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError)
    with fresh.connect() as conn:
        rows = conn.execute("SELECT claimed_by, attempts FROM medpg.chunks").fetchall()
    assert rows and all(r == (None, 0) for r in rows)
    assert Embedder(fresh, fresh.settings).embed_pending().written == len(rows)
