"""Any writer covered: documents inserted, edited and deleted in plain SQL get what `medpg ingest` gives.

Their chunks that no longer reproduce the body go in the writer's own transaction, the document is
queued for chunking, and `medpg embed` (or a worker's reconcile) cuts and embeds it again: every
vector and every evidence passage then matches the final text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import medpg
from medpg.db import Database
from medpg.embedding import Embedder, queued_documents, reconcile
from medpg.encoders import load_article_encoder
from medpg.status import collect_status
from tests.conftest import DATA_DIR, truncate
from tests.integration.worker_harness import (
    all_current,
    assert_vectors_match_text,
    ingest_docs,
    load_jsonl,
    tiny_overrides,
)

pytestmark = pytest.mark.integration

NOTES = DATA_DIR / "mtsamples" / "notes.jsonl"


@pytest.fixture(scope="module")
def wdb(
    migrated_db: Callable[..., Database], tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> Iterator[Database]:
    database = migrated_db("sql_writers", **tiny_overrides(tiny_bert_dir, tiny_cross_encoder_dir))
    yield database
    database.dispose()


@pytest.fixture()
def loaded(wdb: Database, tmp_path: Path) -> Database:
    """20 clinical notes ingested and embedded."""
    truncate(wdb)
    ingest_docs(wdb, wdb.settings, load_jsonl(NOTES, limit=20), tmp_path / "notes.jsonl")
    Embedder(wdb, wdb.settings).embed_pending()
    assert all_current(wdb)
    return wdb


def _scalar(db: Database, sql: str, *args: object) -> object:
    with db.connect() as conn:
        row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def _evidence_reproduces_body(db: Database) -> None:
    """Every chunk's passage is its document's body at its offsets."""
    bad = _scalar(
        db,
        "SELECT count(*) FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id "
        "WHERE substr(d.body, c.char_start + 1, c.char_end - c.char_start) IS DISTINCT FROM c.text",
    )
    assert bad == 0


def _longest_document(db: Database) -> int:
    doc = _scalar(
        db,
        "SELECT document_id FROM medpg.chunks GROUP BY document_id ORDER BY count(*) DESC, document_id LIMIT 1",
    )
    assert isinstance(doc, int)
    return doc


def test_ingest_queues_nothing(loaded: Database) -> None:
    with loaded.connect() as conn:
        assert queued_documents(conn) == 0


def test_sql_update_drops_stale_chunks_in_the_same_transaction(loaded: Database) -> None:
    doc = _longest_document(loaded)
    chunks_before = _scalar(loaded, "SELECT count(*) FROM medpg.chunks WHERE document_id = %s", doc)
    with loaded.connect() as conn:
        # Text at the start shifts every offset: no old passage reproduces the new body.
        conn.execute(
            "UPDATE medpg.documents SET body = 'Allergy: penicillin. ' || body WHERE id = %s", (doc,)
        )
        left = conn.execute("SELECT count(*) FROM medpg.chunks WHERE document_id = %s", (doc,)).fetchone()
        assert left == (0,) and queued_documents(conn) == 1  # visible to the writer before commit
        conn.commit()
    assert isinstance(chunks_before, int) and chunks_before > 1
    _evidence_reproduces_body(loaded)
    status = collect_status(loaded, loaded.settings)
    assert status.documents_to_chunk == 1
    # Search ranks the document on its new text and never shows a passage of the old one.
    response = medpg.search(
        "penicillin allergy", mode="lexical", db=loaded, settings=loaded.settings, rerank=False
    )
    hit = next(r for r in response.results if r.document_id == doc)
    assert hit.evidence is None or "penicillin" in (hit.evidence.text or "") or hit.evidence.text == ""

    report = Embedder(loaded, loaded.settings).embed_pending()
    assert report.rechunked == 1 and report.written >= chunks_before
    assert all_current(loaded)
    _evidence_reproduces_body(loaded)
    assert assert_vectors_match_text(loaded, load_article_encoder(loaded.settings)) > 0
    with loaded.connect() as conn:
        assert queued_documents(conn) == 0


def test_sql_append_keeps_the_chunks_that_still_match(loaded: Database) -> None:
    doc = _longest_document(loaded)
    first = _scalar(loaded, "SELECT id FROM medpg.chunks WHERE document_id = %s AND ordinal = 0", doc)
    with loaded.connect() as conn:
        conn.execute(
            "UPDATE medpg.documents SET body = body || ' Follow-up in two weeks.' WHERE id = %s", (doc,)
        )
        conn.commit()
    # The first window still reproduces the body: it stays, with its vector, until re-chunked.
    assert _scalar(loaded, "SELECT embedding IS NOT NULL FROM medpg.chunks WHERE id = %s", first) is True
    _evidence_reproduces_body(loaded)
    Embedder(loaded, loaded.settings).embed_pending()
    assert all_current(loaded)
    assert _scalar(loaded, "SELECT id FROM medpg.chunks WHERE document_id = %s AND ordinal = 0", doc) == first
    last = _scalar(
        loaded, "SELECT text FROM medpg.chunks WHERE document_id = %s ORDER BY ordinal DESC LIMIT 1", doc
    )
    assert isinstance(last, str) and last.endswith("Follow-up in two weeks.")


def test_sql_title_change_re_embeds_every_chunk(loaded: Database) -> None:
    doc = _longest_document(loaded)
    with loaded.connect() as conn:
        conn.execute("UPDATE medpg.documents SET title = 'Renamed note' WHERE id = %s", (doc,))
        conn.commit()
    report = Embedder(loaded, loaded.settings).embed_pending()
    n = _scalar(loaded, "SELECT count(*) FROM medpg.chunks WHERE document_id = %s", doc)
    assert report.rechunked == 1 and report.written == n
    assert assert_vectors_match_text(loaded, load_article_encoder(loaded.settings)) > 0


def test_sql_metadata_change_costs_nothing(loaded: Database) -> None:
    with loaded.connect() as conn:
        conn.execute("UPDATE medpg.documents SET metadata = metadata || '{\"reviewed\": true}'")
        assert queued_documents(conn) == 0
        conn.commit()
    assert all_current(loaded)


def test_sql_insert_and_delete(loaded: Database) -> None:
    with loaded.connect() as conn:
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
            "VALUES ('app', 'n-1', 'Discharge', 'Patient discharged home on metformin.', '\\x00')"
        )
        conn.commit()
        doc = conn.execute("SELECT id FROM medpg.documents WHERE external_id = 'n-1'").fetchone()
    assert doc is not None
    status = collect_status(loaded, loaded.settings)
    assert status.documents_to_chunk == 1
    sent: list[list[int]] = []
    report = reconcile(loaded, loaded.settings, sent.append)  # the workers' path: chunk, then enqueue
    new_chunks = _scalar(
        loaded, "SELECT array_agg(id ORDER BY id) FROM medpg.chunks WHERE document_id = %s", doc[0]
    )
    assert report.enqueued == 1 and sent == [new_chunks]
    with loaded.connect() as conn:
        conn.execute("DELETE FROM medpg.documents WHERE id = %s", (doc[0],))
        conn.commit()
        assert conn.execute(
            "SELECT count(*) FROM medpg.chunks WHERE document_id = %s", (doc[0],)
        ).fetchone() == (0,)
        assert queued_documents(conn) == 0


def test_sql_edits_during_embedding_end_with_the_final_text(wdb: Database, tmp_path: Path) -> None:
    """A writer edits documents in plain SQL while the embedder runs; afterwards every vector and
    every passage belongs to the final text."""
    truncate(wdb)
    ingest_docs(wdb, wdb.settings, load_jsonl(NOTES, limit=30), tmp_path / "notes.jsonl")
    with wdb.connect() as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM medpg.documents ORDER BY id").fetchall()]
    stop = threading.Event()

    def edit() -> None:
        round_ = 0
        while not stop.is_set() and round_ < 40:
            with wdb.connect() as conn:
                doc = ids[round_ % len(ids)]
                conn.execute(
                    "UPDATE medpg.documents SET body = %s || body WHERE id = %s", (f"Edit {round_}. ", doc)
                )
                conn.commit()
            round_ += 1
            stop.wait(0.05)

    writer = threading.Thread(target=edit)
    writer.start()
    try:
        Embedder(wdb, wdb.settings).embed_pending()
    finally:
        stop.set()
        writer.join()
    Embedder(wdb, wdb.settings).embed_pending()  # what the edits left for the next run
    assert all_current(wdb)
    _evidence_reproduces_body(wdb)
    assert assert_vectors_match_text(wdb, load_article_encoder(wdb.settings)) > 0
    with wdb.connect() as conn:
        assert queued_documents(conn) == 0
