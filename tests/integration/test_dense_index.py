"""The dense index as embedding_space records it, and dense search's per-patient plan.

One database (MiniLM profile: 384-d cosine) with 30 patients of 40 documents each and 300
documents without a patient, every chunk given a clustered random vector as the current model's
(two documents of one patient share a vector: a tie). The HNSW index is rebuilt with halfvec
storage and other graph parameters (through ``medpg.embedding.index`` and ``medpg db reindex``);
searches confined to patients (by ``patient_ids`` or by row-level security) are compared with an
exact scan written out here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from medpg.access import Scope, create_sql_role
from medpg.config import get_settings
from medpg.db import Database
from medpg.embedding.index import (
    INDEX_NAME,
    IndexSpec,
    check_spec,
    index_definition,
    read_spec,
    rebuild_dense_index,
)
from medpg.errors import ConfigError
from medpg.ingest.validation import Record
from medpg.ingest.writer import DocumentWriter
from tests.conftest import log_nested_plans

pytestmark = pytest.mark.integration

DIM = 384
PATIENTS = [f"p{i:02d}" for i in range(30)]
PER_PATIENT = 40
UNASSIGNED = 300
TIED = ("p03", 0, 1)  # patient p03's documents 0 and 1 get the same vector


def _records(patient: str | None, count: int) -> list[Record]:
    return [
        Record(
            i,
            f"{patient or 'none'}-{i}",
            "",
            f"note {i} of {patient or 'nobody'} about follow-up care",
            {},
            patient,
            None,
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def dense_db(db: Database) -> Iterator[Database]:
    for patient in PATIENTS:
        source = "clinic" if patient < "p15" else "ward"
        DocumentWriter(db, db.settings, source).write(_records(patient, PER_PATIENT))
    DocumentWriter(db, db.settings, "library").write(_records(None, UNASSIGNED))
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((24, DIM))
    with db.connect() as conn:
        conn.execute("UPDATE medpg.embedding_space SET model = 'test-model'")
        rows = conn.execute(
            "SELECT c.id, d.external_id FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id "
            "ORDER BY c.id"
        ).fetchall()
        vectors = centres[rng.integers(len(centres), size=len(rows))] + 0.6 * rng.standard_normal(
            (len(rows), DIM)
        )
        by_external = {ext: k for k, (_, ext) in enumerate(rows)}
        tied_a, tied_b = (by_external[f"{TIED[0]}-{i}"] for i in TIED[1:])
        vectors[tied_b] = vectors[tied_a]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE medpg.chunks SET embedding = %s, embedding_model = 'test-model', "
                "embedded_hash = content_hash, embedded_at = now() WHERE id = %s",
                [(v.astype(np.float32), r[0]) for v, r in zip(vectors, rows, strict=True)],
            )
        conn.commit()
    rebuild_dense_index(db, storage="vector", m=16, ef_construction=64)
    with db.connect() as conn:
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE medpg.documents")
        conn.execute("VACUUM ANALYZE medpg.chunks")
    create_sql_role(db, "dense_p03_app", Scope("default", ("p03",)))
    yield db


def _queries(db: Database, count: int, seed: int) -> list[np.ndarray]:
    """Query vectors near stored chunks (so neighbourhoods are crowded, not empty)."""
    rng = np.random.default_rng(seed)
    with db.connect() as conn:
        stored = [
            np.asarray(r[0].to_numpy())
            for r in conn.execute("SELECT embedding FROM medpg.chunks ORDER BY id").fetchall()
        ]
    picks = rng.choice(len(stored), size=count, replace=False)
    out = []
    for p in picks:
        q = stored[p] + 0.5 * rng.standard_normal(DIM) / np.sqrt(DIM)
        out.append((q / np.linalg.norm(q)).astype(np.float32))
    return out


def _dense(
    conn: psycopg.Connection[Any], q: np.ndarray, n: int = 10, **filters: Any
) -> list[tuple[Any, ...]]:
    args = "".join(f", {k} => %({k})s" for k in filters)
    return conn.execute(
        f"SELECT document_id, rank, score, chunk_id FROM medpg.dense_search(%(q)s::vector, %(n)s, 100{args}) "
        "WHERE rank IS NOT NULL ORDER BY rank",
        {"q": q, "n": n, **filters},
    ).fetchall()


def _exact(
    conn: psycopg.Connection[Any],
    q: np.ndarray,
    n: int,
    patients: list[str],
    sources: list[str] | None = None,
) -> list[tuple[Any, ...]]:
    """The exact answer: every chunk of the patients scored (the ORDER BY cannot use the index),
    best chunk per document by (distance, chunk id), documents by (distance, document id)."""
    return conn.execute(
        """
        WITH scored AS (
            SELECT c.document_id AS doc, c.id AS chunk, (c.embedding <=> %(q)s::vector)::float8 AS dist
            FROM medpg.documents d JOIN medpg.chunks c ON c.document_id = d.id
            WHERE d.patient_id = ANY (%(p)s) AND (%(s)s::text[] IS NULL OR d.source = ANY (%(s)s))
              AND c.embedding IS NOT NULL
        ),
        best AS (SELECT DISTINCT ON (doc) doc, chunk, dist FROM scored ORDER BY doc, dist, chunk)
        SELECT doc, (row_number() OVER (ORDER BY dist, doc))::integer, 1 - dist, chunk
        FROM best ORDER BY dist, doc LIMIT %(n)s
        """,
        {"q": q, "p": patients, "s": sources, "n": n},
    ).fetchall()


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    """The same documents, ranks and chunks in the same order; scores equal up to rounding."""
    assert [(r[0], r[1], r[3]) for r in got] == [(r[0], r[1], r[3]) for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], abs=1e-12)


def _scans(conn: psycopg.Connection[Any], index: str) -> int:
    """Index scans started in this transaction so far."""
    row = conn.execute("SELECT pg_stat_get_xact_numscans(%s::regclass)", (f"medpg.{index}",)).fetchone()
    assert row is not None
    return int(row[0])


def _patient_scans(conn: psycopg.Connection[Any]) -> int:
    return _scans(conn, "documents_patient_idx") + _scans(conn, "documents_tenant_patient_idx")


def _top_ids(conn: psycopg.Connection[Any], queries: list[np.ndarray]) -> list[list[tuple[int, float]]]:
    return [[(r[0], r[2]) for r in _dense(conn, q)] for q in queries]


def _url_as(db: Database, role: str) -> str:
    url = db.url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")
    return re.sub(r"//[^@/]*@", f"//{role}@", url, count=1)


# --------------------------------------------------------------------------------------------------
# building the index


def test_halfvec_index_is_built_used_and_close_to_the_vector_index(dense_db: Database) -> None:
    queries = _queries(dense_db, 20, seed=1)
    rebuild_dense_index(dense_db, storage="vector", m=16, ef_construction=64)
    with dense_db.connect() as conn:
        assert "vector_cosine_ops" in (index_definition(conn) or "")
        full = _top_ids(conn, queries)
    build = rebuild_dense_index(dense_db, storage="halfvec")
    assert build.spec.storage == "halfvec" and build.vectors == len(PATIENTS) * PER_PATIENT + UNASSIGNED
    with dense_db.connect() as conn:
        definition = index_definition(conn) or ""
        assert f"(embedding)::halfvec({DIM})" in definition and "halfvec_cosine_ops" in definition
        assert read_spec(conn).storage == "halfvec"
        # The planner uses the expression index for the query dense search makes...
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                f"EXPLAIN SELECT id FROM medpg.chunks ORDER BY (embedding::halfvec({DIM})) <=> %s::halfvec({DIM}) "
                "LIMIT 10",
                (queries[0],),
            ).fetchall()
        )
        assert f"Index Scan using {INDEX_NAME}" in plan
        # ...and dense search itself scans it.
        before = _scans(conn, INDEX_NAME)
        half = _top_ids(conn, queries)
        assert _scans(conn, INDEX_NAME) > before
    overlap = [len({d for d, _ in a} & {d for d, _ in b}) / len(a) for a, b in zip(full, half, strict=True)]
    assert np.mean(overlap) >= 0.9, overlap
    # Candidates are scored with the stored full-precision vectors: a document found by both
    # indexes has the same score.
    for a, b in zip(full, half, strict=True):
        scores = dict(a)
        for doc, score in b:
            if doc in scores:
                assert score == pytest.approx(scores[doc], abs=1e-12)


def test_the_halfvec_plan_is_the_one_inside_dense_search(dense_db: Database) -> None:
    rebuild_dense_index(dense_db, storage="halfvec")
    q = _queries(dense_db, 1, seed=2)[0]
    with dense_db.connect() as conn:
        notices = log_nested_plans(conn)
        _dense(conn, q)
        conn.rollback()
    plans = "\n".join(notices)
    assert f"halfvec({DIM})" in plans
    assert f"Index Scan using {INDEX_NAME}" in plans


def test_rebuilding_with_other_parameters_records_them(dense_db: Database) -> None:
    build = rebuild_dense_index(
        dense_db, storage="vector", m=8, ef_construction=32, parallel_workers=1, maintenance_work_mem="128MB"
    )
    assert (build.spec.m, build.spec.ef_construction, build.maintenance_work_mem) == (8, 32, "128MB")
    with dense_db.connect() as conn:
        row = conn.execute(
            "SELECT index_storage, hnsw_m, hnsw_ef_construction FROM medpg.embedding_space"
        ).fetchone()
        assert row == ("vector", 8, 32)
        definition = index_definition(conn) or ""
        assert "m='8'" in definition and "ef_construction='32'" in definition
        assert "vector_cosine_ops" in definition and "halfvec" not in definition
        # The build's settings were local to it.
        assert conn.execute("SHOW maintenance_work_mem").fetchone() != ("128MB",)
    # Parameters left out keep the recorded ones.
    again = rebuild_dense_index(dense_db, storage="halfvec")
    assert (again.spec.m, again.spec.ef_construction) == (8, 32)


def test_a_concurrent_rebuild_swaps_the_index_and_leaves_nothing_behind(dense_db: Database) -> None:
    rebuild_dense_index(dense_db, storage="vector", m=16, ef_construction=64)
    q = _queries(dense_db, 1, seed=3)[0]
    with dense_db.connect() as conn:
        before = _dense(conn, q)
    build = rebuild_dense_index(dense_db, storage="halfvec", m=12, ef_construction=48, concurrently=True)
    assert build.concurrently and build.size_bytes > 0
    with dense_db.connect() as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'chunks' AND indexname LIKE 'chunks_embedding%%'"
            )
        }
        assert names == {INDEX_NAME}
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", (f"medpg.{INDEX_NAME}",)
        ).fetchone()
        assert valid == (True,)
        assert "halfvec_cosine_ops" in (index_definition(conn) or "")
        assert conn.execute(
            "SELECT index_storage, hnsw_m, hnsw_ef_construction FROM medpg.embedding_space"
        ).fetchone() == ("halfvec", 12, 48)
        after = _dense(conn, q)
        assert len({r[0] for r in before} & {r[0] for r in after}) >= 8
        # The session's build settings were reset.
        assert conn.execute("SHOW max_parallel_maintenance_workers").fetchone() is not None


@pytest.mark.parametrize(
    ("storage", "m", "ef", "message"),
    [
        ("float", 16, 64, "storage"),
        ("vector", 1, 64, "m must be"),
        ("vector", 40, 64, "at least 2 x m"),
        ("vector", 16, 2000, "ef_construction must be"),
    ],
)
def test_settings_pgvector_would_reject_are_refused_first(
    storage: str, m: int, ef: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_spec(IndexSpec(DIM, "cosine", storage, m, ef))  # type: ignore[arg-type]


def test_a_3000_dimension_space_needs_halfvec() -> None:
    with pytest.raises(ConfigError, match="halfvec"):
        check_spec(IndexSpec(3000, "ip", "vector", 16, 64))
    check_spec(IndexSpec(3000, "ip", "halfvec", 16, 64))


def test_reindex_cli(dense_db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from medpg.cli import app

    monkeypatch.setenv("MEDPG_DATABASE_URL", str(dense_db.settings.database_url))
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "minilm")
    monkeypatch.setenv("MEDPG_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = runner.invoke(
            app,
            [
                "db",
                "reindex",
                "--storage",
                "halfvec",
                "--m",
                "10",
                "--ef-construction",
                "40",
                "--parallel-workers",
                "1",
            ],
        )
        assert out.exit_code == 0, out.output
        assert "halfvec" in out.stdout and "m=10" in out.stdout and "ef_construction=40" in out.stdout
        with dense_db.connect() as conn:
            assert read_spec(conn).storage == "halfvec"
            assert "m='10'" in (index_definition(conn) or "")
        out = runner.invoke(app, ["db", "reindex", "--storage", "vector", "--concurrently"])
        assert out.exit_code == 0, out.output
        with dense_db.connect() as conn:
            assert (read_spec(conn).storage, read_spec(conn).m) == ("vector", 10)
        bad = runner.invoke(app, ["db", "reindex", "--m", "50", "--ef-construction", "60"])
        assert bad.exit_code != 0 and "2 x m" in bad.output
        bad = runner.invoke(app, ["db", "reindex", "--storage", "float"])
        assert bad.exit_code != 0
    finally:
        get_settings.cache_clear()


# --------------------------------------------------------------------------------------------------
# the per-patient plan


@pytest.mark.parametrize("storage", ["vector", "halfvec"])
def test_one_patients_search_is_the_exact_scan_through_the_patient_btree(
    dense_db: Database, storage: str
) -> None:
    rebuild_dense_index(dense_db, storage=storage)  # type: ignore[arg-type]
    with dense_db.connect() as conn:
        for q in _queries(dense_db, 8, seed=4):
            for patients, n in ((["p03"], 10), (["p03"], 100), (["p07", "p21"], 25)):
                hnsw, btree = _scans(conn, INDEX_NAME), _patient_scans(conn)
                got = _dense(conn, q, n, patient_ids=patients)
                assert _scans(conn, INDEX_NAME) == hnsw  # the HNSW index is not touched
                assert _patient_scans(conn) > btree
                expected = _exact(conn, q, n, patients)
                _same(got, expected)
            # With a second filter, only documents passing both.
            got = _dense(conn, q, 10, patient_ids=["p07", "p21"], sources=["ward"])
            _same(got, _exact(conn, q, 10, ["p07", "p21"], ["ward"]))
            assert got and all(r[0] in _patient_docs(conn, ["p21"]) for r in got)


def _patient_docs(conn: psycopg.Connection[Any], patients: list[str]) -> set[int]:
    return {
        r[0] for r in conn.execute("SELECT id FROM medpg.documents WHERE patient_id = ANY (%s)", (patients,))
    }


def test_ties_come_in_document_order(dense_db: Database) -> None:
    rebuild_dense_index(dense_db, storage="vector")
    with dense_db.connect() as conn:
        ids = {
            r[1]: r[0]
            for r in conn.execute(
                "SELECT id, external_id FROM medpg.documents WHERE external_id = ANY (%s)",
                ([f"{TIED[0]}-{i}" for i in TIED[1:]],),
            )
        }
        a, b = (ids[f"{TIED[0]}-{i}"] for i in TIED[1:])
        row = conn.execute("SELECT embedding FROM medpg.chunks WHERE document_id = %s", (a,)).fetchone()
        assert row is not None
        q = row[0]
        got = _dense(conn, np.asarray(q.to_numpy()), 5, patient_ids=[TIED[0]])
        assert [r[0] for r in got[:2]] == sorted([a, b])
        assert got[0][2] == got[1][2]


def test_a_large_selection_still_goes_through_the_index(dense_db: Database) -> None:
    """Above medpg.dense_exact_chunks the HNSW index serves the patient filter (iterative scan)."""
    rebuild_dense_index(dense_db, storage="vector")
    q = _queries(dense_db, 1, seed=5)[0]
    with dense_db.connect() as conn:
        conn.execute("SET medpg.dense_exact_chunks = 20")
        hnsw = _scans(conn, INDEX_NAME)
        got = _dense(conn, q, 10, patient_ids=["p03", "p04"])
        assert _scans(conn, INDEX_NAME) > hnsw
        assert len(got) == 10 and {r[0] for r in got} <= _patient_docs(conn, ["p03", "p04"])
        conn.execute("RESET medpg.dense_exact_chunks")
        exact = _dense(conn, q, 10, patient_ids=["p03", "p04"])
        _same(exact, _exact(conn, q, 10, ["p03", "p04"]))
        assert len({r[0] for r in got} & {r[0] for r in exact}) >= 8


@pytest.mark.parametrize("storage", ["vector", "halfvec"])
def test_a_patient_bound_role_gets_the_exact_answer_and_nothing_else(
    dense_db: Database, storage: str
) -> None:
    rebuild_dense_index(dense_db, storage=storage)  # type: ignore[arg-type]
    from pgvector.psycopg import register_vector

    queries = _queries(dense_db, 6, seed=6)
    with dense_db.connect() as owner:
        own = _patient_docs(owner, ["p03"])
        expected = [_exact(owner, q, 10, ["p03"]) for q in queries]
        expected_all = [_exact(owner, q, 100, ["p03"]) for q in queries]
    with psycopg.connect(_url_as(dense_db, "dense_p03_app")) as conn:
        register_vector(conn)
        for q, want, want_all in zip(queries, expected, expected_all, strict=True):
            got = _dense(conn, q, 10)
            _same(got, want)
            assert {r[0] for r in got} <= own
            _same(_dense(conn, q, 100), want_all)
            # Another patient's filter finds nothing; the own patient's filter is the same answer.
            assert _dense(conn, q, 10, patient_ids=["p04"]) == []
            _same(_dense(conn, q, 10, patient_ids=["p03", "p04"]), want)
        # Forced through the index, the answer is still confined to the role's patient.
        conn.execute("SET medpg.dense_exact_chunks = 0")
        for q in queries:
            got = _dense(conn, q, 10)
            assert got and {r[0] for r in got} <= own


def test_a_failed_rebuild_keeps_the_old_index(dense_db: Database) -> None:
    from medpg.errors import DatabaseError

    rebuild_dense_index(dense_db, storage="vector", m=16, ef_construction=64)
    for concurrently in (False, True):
        with pytest.raises(DatabaseError, match="building the dense index failed"):
            rebuild_dense_index(
                dense_db, storage="halfvec", maintenance_work_mem="not-a-size", concurrently=concurrently
            )
        with dense_db.connect() as conn:
            assert read_spec(conn).storage == "vector"
            assert "vector_cosine_ops" in (index_definition(conn) or "")


def test_the_hnsw_benchmark_runs_small(tmp_path: Any) -> None:
    """benchmarks/hnsw_params.py end to end at 2,000 vectors (its own embedded server)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    if not (repo.parent / "shared" / "data" / "nfcorpus" / "corpus.jsonl").exists():
        pytest.skip("benchmarks/corpus.py needs ../shared/data")
    out = tmp_path / "hnsw.md"
    subprocess.run(
        [
            sys.executable,
            str(repo / "benchmarks" / "hnsw_params.py"),
            "--vectors",
            "2000",
            "--dim",
            "256",
            "--queries",
            "10",
            "--grid",
            "vector:8:32,halfvec:8:32",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.read_text()
    assert "| vector | 8 | 32 |" in text and "| halfvec | 8 | 32 |" in text
    assert "Exact top 10 over k vectors" in text
