"""Search end to end: SQL fusion = Python fusion, hybrid finds what each retriever misses, filters,
hostile query strings, warnings, rerank and the CLI. Vectors are written by hand so every
expectation can be worked out; the real MiniLM query encoder runs only for the hostile strings.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from medpg.config import Settings
from medpg.db import Database
from medpg.errors import ConfigError, InputError
from medpg.retrieval import Filters, search
from medpg.retrieval.fusion import Candidate, fuse
from tests.conftest import log_nested_plans, truncate

pytestmark = pytest.mark.integration

DIM = 384


def unit(*weights: tuple[int, float]) -> np.ndarray:
    """A unit vector with the given (axis, weight) components."""
    v = np.zeros(DIM, dtype=np.float32)
    for axis, w in weights:
        v[axis] = w
    return v / np.linalg.norm(v)


def toward(sim: float, other_axis: int) -> np.ndarray:
    """A unit vector whose cosine similarity with axis 0 is ``sim``."""
    return unit((0, sim), (other_axis, float(np.sqrt(1 - sim * sim))))


def add_documents(db: Database, source: str, docs: list[dict[str, Any]]) -> dict[str, int]:
    """Insert documents (one chunk each) and give every chunk the document's vector, as the current model."""
    from medpg.embedding import article_model_identity

    model = article_model_identity(db.settings)
    with db.connect() as conn:
        ids: dict[str, int] = {}
        for d in docs:
            body = d["body"]
            row = conn.execute(
                "INSERT INTO medpg.documents (source, external_id, title, body, metadata, patient_id, document_date,"
                " content_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    source,
                    d["id"],
                    d.get("title", ""),
                    body,
                    orjson.dumps(d.get("metadata", {})).decode(),
                    d.get("patient_id"),
                    d.get("date"),
                    hashlib.sha256(body.encode()).digest(),
                ),
            ).fetchone()
            assert row is not None
            ids[d["id"]] = row[0]
            conn.execute(
                "INSERT INTO medpg.chunks (document_id, ordinal, text, char_start, char_end, token_count, content_hash,"
                " embedding, embedding_model, embedded_hash, embedded_at)"
                " VALUES (%s, 0, %s, 0, %s, 1, %s, %s, %s, %s, now())",
                (
                    row[0],
                    body,
                    len(body),
                    b"h",
                    d.get("vector"),
                    model if d.get("vector") is not None else None,
                    b"h" if d.get("vector") is not None else None,
                ),
            )
        conn.execute("UPDATE medpg.embedding_space SET model = %s", (model,))
        conn.commit()
    return ids


# --------------------------------------------------------------------------------------------------
# a corpus where each retriever alone misses a relevant document

MISS_CORPUS = [
    # R1: all the query's words, but its vector points elsewhere (dense misses it)
    {
        "id": "R1",
        "title": "Fish oil and depression",
        "body": "Fish oil supplements and depression: fish oil reduced depression scores.",
        "vector": unit((1, 1.0)),
    },
    # R2: the query's meaning in other words (lexical misses it)
    {
        "id": "R2",
        "title": "Marine lipids and mood",
        "body": "Omega-3 supplementation from marine sources improved mood in adults.",
        "vector": unit((0, 1.0)),
    },
    {"id": "D1", "title": "Sleep", "body": "Sleep quality in shift workers.", "vector": toward(0.9, 2)},
    {
        "id": "D2",
        "title": "Exercise",
        "body": "Walking and anxiety in older adults.",
        "vector": toward(0.85, 3),
    },
    {"id": "D3", "title": "Diet", "body": "Mediterranean diet and wellbeing.", "vector": toward(0.8, 4)},
    {
        "id": "L1",
        "title": "Engines",
        "body": "Engine oil viscosity at low temperatures " + "and gears " * 20,
        "vector": toward(0.1, 5),
    },
    {
        "id": "L2",
        "title": "Aquaria",
        "body": "Keeping tropical fish in home aquaria " + "with filters " * 20,
        "vector": toward(0.1, 6),
    },
]
QUERY = "fish oil for depression"


@pytest.fixture(scope="module")
def miss_db(db: Database) -> Iterator[Database]:
    truncate(db)
    add_documents(db, "miss", MISS_CORPUS)
    yield db


def top(db: Database, k: int = 3, **kwargs: Any) -> list[str]:
    response = search(
        QUERY, k=k, db=db, settings=db.settings, query_embedding=unit((0, 1.0)), rerank=False, **kwargs
    )
    return [r.external_id for r in response.results]


def test_hybrid_finds_what_each_retriever_misses(miss_db: Database) -> None:
    dense = top(miss_db, mode="dense")
    lexical = top(miss_db, mode="lexical")
    hybrid = top(miss_db, mode="hybrid", fusion="weighted")
    assert "R1" not in dense and "R2" in dense
    assert "R2" not in lexical and "R1" in lexical
    assert {"R1", "R2"} <= set(hybrid)


def test_results_explain_themselves(miss_db: Database) -> None:
    # Without feedback, so the dense scores are the hand-made vectors' (tests/integration/test_ranking.py
    # checks the feedback's).
    plain = miss_db.settings.with_changes(feedback="none")
    response = search(QUERY, k=7, db=miss_db, settings=plain, query_embedding=unit((0, 1.0)), rerank=False)
    by_id = {r.external_id: r for r in response.results}
    r1, r2 = by_id["R1"].explanation, by_id["R2"].explanation
    assert r1.lexical_rank == 1 and set(r1.matched_terms) == {"fish", "oil", "depress"}
    assert r1.dense_rank is not None and r1.dense_score == pytest.approx(0.0, abs=1e-6)
    assert r2.dense_rank == 1 and r2.dense_score == pytest.approx(1.0, abs=1e-6)
    assert r2.lexical_rank is None and r2.lexical_score == 0.0 and r2.matched_terms == ()
    assert response.query_terms == ("depress", "fish", "oil")
    ev = by_id["R2"].evidence
    assert ev.text == MISS_CORPUS[1]["body"] and (ev.char_start, ev.char_end) == (0, len(ev.text))
    assert [r.rank for r in response.results] == list(range(1, 8))
    assert response.timings_ms["sql"] > 0


def test_sql_fusion_equals_python_fusion_on_random_inputs(miss_db: Database) -> None:
    rng = random.Random(7)
    with miss_db.connect() as conn:
        for trial in range(20):
            n = rng.randint(1, 30)
            cands = []
            for i in range(n):
                dr = rng.choice([None, rng.randint(1, 50)])
                lr = rng.choice([None, rng.randint(1, 50)]) if dr is not None else rng.randint(1, 50)
                ds = rng.choice([None, rng.uniform(-1, 1)]) if dr is None else rng.uniform(-1, 1)
                ls = rng.choice([None, rng.uniform(0, 20)]) if lr is None else rng.uniform(0, 20)
                cands.append(Candidate(i, dr, ds, lr, ls))
            if trial == 0:  # all scores equal: an empty range
                cands = [Candidate(i, i + 1, 0.5, i + 1, 2.0) for i in range(3)]
            for method in ("rrf", "weighted", "adaptive"):
                w_d, w_l, k = rng.uniform(0, 2), rng.uniform(0, 2), rng.randint(1, 100)
                coverage = rng.choice([0.0, 1.0, rng.uniform(0, 1)])
                rows = conn.execute(
                    "SELECT document_id, fused_score FROM medpg.fuse(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        [c.document_id for c in cands],
                        [c.dense_rank for c in cands],
                        [c.dense_score for c in cands],
                        [c.lexical_rank for c in cands],
                        [c.lexical_score for c in cands],
                        method,
                        k,
                        w_d,
                        w_l,
                        coverage,
                    ),
                ).fetchall()
                expected = fuse(
                    cands, method, rrf_k=k, dense_weight=w_d, lexical_weight=w_l, lexical_coverage=coverage  # type: ignore[arg-type]
                )
                assert dict(rows) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("method", ["weighted", "rrf"])
def test_hybrid_search_fused_scores_equal_python_fusion(miss_db: Database, method: str) -> None:
    with miss_db.connect() as conn:
        rows = conn.execute(
            "SELECT document_id, dense_rank, dense_score, lexical_rank, lexical_score, fused_score, rank "
            "FROM medpg.hybrid_search(%s, %s, k => 100, fusion => %s, dense_weight => 0.7, lexical_weight => 0.3)",
            (QUERY, unit((0, 1.0)), method),
        ).fetchall()
    cands = [Candidate(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    expected = fuse(cands, method, rrf_k=60, dense_weight=0.7, lexical_weight=0.3)  # type: ignore[arg-type]
    assert {r[0]: r[5] for r in rows} == pytest.approx(expected, rel=1e-12)
    assert [r[6] for r in rows] == list(range(1, len(rows) + 1))
    assert [r[5] for r in rows] == sorted((r[5] for r in rows), reverse=True)


def test_warnings_when_embeddings_are_not_current(miss_db: Database) -> None:
    with miss_db.connect() as conn:
        current = conn.execute("SELECT model FROM medpg.embedding_space").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE medpg.embedding_space SET model = 'some-other-model@123'")
        conn.commit()
    try:
        response = search(QUERY, k=3, db=miss_db, settings=miss_db.settings, rerank=False)
        assert any("some-other-model@123" in w for w in response.warnings)
        assert [r.external_id for r in response.results][0] == "R1"  # lexical results still come back
        assert all(r.explanation.dense_rank is None for r in response.results)
        dense = search(QUERY, k=3, mode="dense", db=miss_db, settings=miss_db.settings, rerank=False)
        assert dense.results == [] and dense.warnings
    finally:
        with miss_db.connect() as conn:
            conn.execute("UPDATE medpg.embedding_space SET model = %s", (current,))
            conn.commit()


def test_rerank_with_a_cross_encoder(
    miss_db: Database, tiny_cross_encoder_dir: Path, make_settings: Callable[..., Settings]
) -> None:
    with_ce = make_settings(
        database_url=miss_db.settings.database_url,
        cross_encoder_model=str(tiny_cross_encoder_dir),
        rerank_top_k=5,
    )
    response = search(QUERY, k=4, db=miss_db, settings=with_ce, query_embedding=unit((0, 1.0)))
    assert response.reranked
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    assert all(r.explanation.rerank_score is not None for r in response.results)
    with pytest.raises(ConfigError, match="no cross-encoder"):
        search(QUERY, db=miss_db, settings=miss_db.settings, rerank=True, query_embedding=unit((0, 1.0)))


def test_bad_arguments_are_input_errors(miss_db: Database) -> None:
    for kwargs in (
        {"k": 0},
        {"mode": "fuzzy"},
        {"lexical": "tfidf"},
        {"fusion": "borda"},
        {"filters": {"colour": "red"}},
    ):
        with pytest.raises(InputError):
            search(QUERY, db=miss_db, settings=miss_db.settings, rerank=False, **kwargs)  # type: ignore[arg-type]
    with miss_db.connect() as conn, pytest.raises(Exception, match="mode must be"):
        conn.execute("SELECT * FROM medpg.hybrid_search('x', NULL, mode => 'fuzzy')")


# --------------------------------------------------------------------------------------------------
# filters never leak

FILTER_DOCS = [
    {
        "id": f"f{i}",
        "title": f"note {i}",
        "body": f"cancer treatment note {i} " + ("chemotherapy" if i % 2 else "radiation"),
        "metadata": {"dept": ["cardio", "onco", "neuro"][i % 3], "n": i},
        "patient_id": f"p{i % 4}" if i % 5 else None,
        "date": datetime(2020 + i % 4, 1 + i % 12, 1, tzinfo=UTC) if i % 7 else None,
        "vector": unit((0, 1.0), (1 + i % 50, 0.5 + (i % 10) / 10)),
    }
    for i in range(120)
]


def matches(doc: dict[str, Any], source: str, f: Filters) -> bool:
    if f.sources is not None and source not in f.sources:
        return False
    if f.metadata is not None and any(doc["metadata"].get(k) != v for k, v in f.metadata.items()):
        return False
    if f.date_from is not None and (doc["date"] is None or doc["date"] < f.date_from):
        return False
    if f.date_to is not None and (doc["date"] is None or doc["date"] >= f.date_to):
        return False
    return not (f.patient_ids is not None and doc["patient_id"] not in f.patient_ids)


@pytest.fixture(scope="module")
def filter_db(db: Database) -> Iterator[Database]:
    truncate(db)
    add_documents(db, "ward", FILTER_DOCS[:100])
    add_documents(db, "clinic", FILTER_DOCS[100:])
    yield db


FILTERS = [
    Filters(sources=("clinic",)),
    Filters(metadata={"dept": "onco"}),
    Filters(metadata={"dept": "neuro", "n": 7}),
    Filters(date_from=datetime(2021, 1, 1, tzinfo=UTC), date_to=datetime(2022, 6, 1, tzinfo=UTC)),
    Filters(patient_ids=("p1",)),
    Filters(patient_ids=("p2", "p3"), metadata={"dept": "cardio"}, sources=("ward",)),
    Filters(patient_ids=("nobody",)),
]
MODES = [
    {"mode": "dense"},
    {"mode": "lexical", "lexical": "bm25"},
    {"mode": "lexical", "lexical": "ts_rank"},
    {"mode": "hybrid", "lexical": "bm25", "fusion": "weighted"},
    {"mode": "hybrid", "lexical": "ts_rank", "fusion": "rrf"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: repr(f)[:60])
def test_filters_never_leak_and_return_every_match(filter_db: Database, filters: Filters) -> None:
    source_of = {d["id"]: ("clinic" if i >= 100 else "ward") for i, d in enumerate(FILTER_DOCS)}
    expected = {d["id"] for d in FILTER_DOCS if matches(d, source_of[d["id"]], filters)}
    for mode in MODES:
        response = search(
            "cancer chemotherapy",
            k=1000,
            filters=filters,
            db=filter_db,
            settings=filter_db.settings,
            query_embedding=unit((0, 1.0)),
            rerank=False,
            candidates=200,
            **mode,
        )
        got = {r.external_id for r in response.results}
        assert got <= expected, (mode, got - expected)
        assert got == expected, (mode, expected - got)  # every body has "cancer"; 200 candidates cover all


def test_filtered_dense_search_still_returns_n(filter_db: Database) -> None:
    for filters, n in ((Filters(sources=("ward",)), 20), (Filters(patient_ids=("p1",)), 5)):
        response = search(
            "x",
            k=n,
            mode="dense",
            filters=filters,
            db=filter_db,
            settings=filter_db.settings,
            query_embedding=unit((0, 1.0)),
            rerank=False,
            candidates=n,
        )
        assert len(response.results) == n
        assert all(matches(FILTER_DOCS[int(r.external_id[1:])], r.source, filters) for r in response.results)


def test_filtered_index_scan_looks_up_each_candidates_document(filter_db: Database) -> None:
    """The filtered HNSW scan checks each candidate's document through the primary key. Written as
    EXISTS, PostgreSQL 18 made it a hashed subplan that read every matching document before the
    scan (at 1M documents, 390 ms of a filtered dense search's 395 ms p50)."""
    with filter_db.connect() as conn:
        notices = log_nested_plans(conn)
        for filters in ("sources => ARRAY['clinic']", "metadata_contains => '{\"dept\": \"onco\"}'"):
            rows = conn.execute(
                f"SELECT document_id FROM medpg.dense_search(%s, 5, {filters})", (unit((0, 1.0)),)
            ).fetchall()
            assert len(rows) == 5
    scans = [n for n in notices if "Index Scan using chunks_embedding_hnsw_idx" in n]
    assert len(scans) >= 2, notices
    for plan in scans:
        assert "documents_pkey" in plan, plan
        assert "hashed SubPlan" not in plan and "Seq Scan on documents" not in plan, plan


# --------------------------------------------------------------------------------------------------
# hostile query strings

HOSTILE = [
    "",
    "   ",
    "'",
    "''",
    "\\",
    "\\'",
    "it's",
    "a & b | !c",
    ":*",
    "foo:*",
    "(((",
    ")",
    "<->",
    "!!!",
    "&|!:*()",
    "' OR 1=1; DROP TABLE medpg.documents; --",
    "$$ $body$",
    "E'\\x00'",
    "über café 東京 😀 ∑",
    "the and of it is",
    "cancer\x00treatment",
    "lone \ud800 surrogate",
    "a" * 3000,
    "x" * 10_000,
    "breast cancer " * 714,
    "\n\t\r",
    "%s %(x)s {0}",
    "'cancer':A | 'x':*",
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t)[:30])
def test_hostile_query_strings_never_cause_sql_errors(filter_db: Database, text: str) -> None:
    for mode in MODES:
        response = search(text, k=5, db=filter_db, settings=filter_db.settings, rerank=False, **mode)
        assert len(response.results) <= 5
    with filter_db.connect() as conn:
        cleaned = text.replace("\x00", " ").encode("utf-8", "replace").decode("utf-8")
        conn.execute("SELECT medpg.or_tsquery(%s), medpg.query_lexemes(%s)", (cleaned, cleaned)).fetchall()
        conn.execute("SELECT * FROM medpg.ts_rank_search(%s, 5)", (cleaned,)).fetchall()
        conn.execute("SELECT * FROM medpg.bm25_search(%s, 5)", (cleaned,)).fetchall()


def test_stopword_and_empty_queries_match_nothing_lexically(filter_db: Database) -> None:
    for text in ("", "the and of it is", "!!!"):
        response = search(text, mode="lexical", db=filter_db, settings=filter_db.settings, rerank=False)
        assert response.results == [] and response.query_terms == ()


def test_over_long_query_is_a_clear_error(filter_db: Database) -> None:
    with pytest.raises(InputError, match="MEDPG_MAX_QUERY_CHARS"):
        search("x" * 20_000, db=filter_db, settings=filter_db.settings, rerank=False)


def test_medpg_search_is_callable(filter_db: Database) -> None:
    import inspect

    import medpg
    import medpg.retrieval

    assert inspect.isfunction(medpg.search) and medpg.search is medpg.retrieval.search
    assert medpg.Filters is Filters
    response = medpg.search("cancer", k=2, mode="lexical", db=filter_db, settings=filter_db.settings)
    assert len(response.results) == 2


def test_import_medpg_search_loads_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, medpg; medpg.search; medpg.SearchResponse; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_search_json_and_table(filter_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from medpg.cli import app
    from medpg.config import get_settings

    monkeypatch.setenv("MEDPG_DATABASE_URL", str(filter_db.settings.database_url))
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "minilm")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = runner.invoke(
            app,
            [
                "search",
                "cancer chemotherapy",
                "-k",
                "3",
                "--mode",
                "lexical",
                "--json",
                "--source",
                "clinic",
                "--metadata",
                '{"dept": "onco"}',
            ],
        )
        assert out.exit_code == 0, out.output
        data = orjson.loads(out.stdout)
        assert len(data["results"]) == 3
        assert all(r["source"] == "clinic" and r["metadata"]["dept"] == "onco" for r in data["results"])
        table = runner.invoke(app, ["search", "cancer", "-k", "2", "--mode", "lexical"])
        assert table.exit_code == 0 and "note" in table.stdout
        bad = runner.invoke(app, ["search", "cancer", "--mode", "fuzzy"])
        assert bad.exit_code == InputError.exit_code and "mode must be" in bad.output
    finally:
        get_settings.cache_clear()


def test_inner_product_space(migrated_db: Callable[..., Database], tiny_bert_dir: Path) -> None:
    """The medcpt profile's space (inner product, here 32-d): operator, index and scores follow it."""
    db = migrated_db(
        "search_ip",
        model_profile="medcpt",
        query_model=str(tiny_bert_dir),
        article_model=str(tiny_bert_dir),
        cross_encoder_model="none",
        embedding_dim=32,
    )
    try:
        rng = np.random.default_rng(3)
        vectors = rng.normal(size=(6, 32)).astype(np.float32)
        with db.connect() as conn:
            for i, v in enumerate(vectors):
                doc = conn.execute(
                    "INSERT INTO medpg.documents (source, external_id, body, content_hash) "
                    "VALUES ('ip', %s, %s, 'h') RETURNING id",
                    (f"v{i}", f"vector number {i}"),
                ).fetchone()[0]  # type: ignore[index]
                conn.execute(
                    "INSERT INTO medpg.chunks (document_id, ordinal, text, char_start, char_end, token_count,"
                    " content_hash, embedding, embedding_model) VALUES (%s, 0, 'x', 0, 1, 1, 'h', %s, 'm')",
                    (doc, v),
                )
            conn.execute("UPDATE medpg.embedding_space SET model = 'm'")
            q = rng.normal(size=32).astype(np.float32)
            rows = conn.execute(
                "SELECT d.external_id, s.dense_score FROM medpg.hybrid_search('vector', %s, 6, 'dense') s "
                "JOIN medpg.documents d ON d.id = s.document_id ORDER BY s.rank",
                (q,),
            ).fetchall()
        expected = sorted(((f"v{i}", float(v @ q)) for i, v in enumerate(vectors)), key=lambda x: -x[1])
        assert [r[0] for r in rows] == [e[0] for e in expected]
        assert [r[1] for r in rows] == pytest.approx([e[1] for e in expected], rel=1e-5)
    finally:
        db.dispose()
