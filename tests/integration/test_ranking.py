"""The default ranking in SQL against its Python twins, and what adaptive fusion is for.

- ``medpg.lexical_coverage``, ``medpg.feedback_vector`` and ``medpg.hybrid_search`` with Rocchio
  feedback compute what ``medpg.retrieval.fusion`` computes (lexical_coverage, rocchio_vector,
  feedback_candidates + fuse), on hand-made vectors;
- on a constructed query set where the lexical leg is noise (every distinctive query word is
  misspelled, so BM25 ranks by the common words alone), adaptive fusion keeps the dense leg's
  ranking while the fixed 0.5/0.5 mix falls below it; with correctly spelled queries adaptive
  fusion is exactly the weighted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from medpg.db import Database
from medpg.retrieval import search
from medpg.retrieval.fusion import Candidate, feedback_candidates, fuse, lexical_coverage, rocchio_vector
from tests.conftest import truncate
from tests.integration.test_search import DIM, MISS_CORPUS, QUERY, add_documents, unit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def miss_db(db: Database) -> Iterator[Database]:
    truncate(db)
    add_documents(db, "miss", MISS_CORPUS)
    yield db


def _lexemes(conn: Any, text: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT u.lexeme, cardinality(u.positions) FROM unnest(to_tsvector('english'::regconfig, %s)) u",
        (text,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


@pytest.mark.parametrize(
    "text",
    [QUERY, "fish oil for depresion and anxeity", "zzzq wxyv", "the and of", "", "oil oil oil aquaria"],
)
def test_sql_lexical_coverage_equals_python(miss_db: Database, text: str) -> None:
    with miss_db.connect() as conn:
        got = conn.execute("SELECT medpg.lexical_coverage(%s)", (text,)).fetchone()[0]  # type: ignore[index]
        dfs = dict(conn.execute("SELECT lexeme, document_frequency FROM medpg.lexical_document_frequencies"))
        n = conn.execute("SELECT documents FROM medpg.lexical_scope_stats()").fetchone()[0]  # type: ignore[index]
        expected = lexical_coverage(_lexemes(conn, text), {k: int(v) for k, v in dfs.items()}, int(n))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert 0.0 <= got <= 1.0


def test_sql_feedback_vector_equals_python(miss_db: Database) -> None:
    rng = np.random.default_rng(3)
    with miss_db.connect() as conn:
        chunks = conn.execute("SELECT id, embedding FROM medpg.chunks ORDER BY id").fetchall()
        for trial in range(10):
            q = rng.standard_normal(DIM).astype(np.float32) * (trial + 1)
            picked = [chunks[i] for i in rng.choice(len(chunks), size=trial % 4, replace=False)]
            weight = [0.0, 0.5, 1.0, 3.0][trial % 4]
            got = conn.execute(
                "SELECT medpg.feedback_vector(%s, %s, %s)", (q, [c[0] for c in picked], weight)
            ).fetchone()[0]  # type: ignore[index]
            expected = rocchio_vector(q, [c[1].to_numpy() for c in picked], weight)
            assert got.to_numpy() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("fusion", ["adaptive", "weighted", "rrf"])
def test_hybrid_search_with_rocchio_feedback_equals_python(miss_db: Database, fusion: str) -> None:
    """First pass without feedback, Rocchio in Python, rescoring and fusion again = the SQL."""
    query_vector = unit((0, 1.0), (2, 0.3))
    call = (
        "SELECT document_id, dense_rank, dense_score, lexical_rank, lexical_score, fused_score, chunk_id "
        "FROM medpg.hybrid_search(%s, %s, k => 100, fusion => %s, feedback => %s, feedback_docs => 3, "
        "feedback_weight => 0.8)"
    )
    with miss_db.connect() as conn:
        first = conn.execute(call, (QUERY, query_vector, fusion, "none")).fetchall()
        coverage = conn.execute("SELECT medpg.lexical_coverage(%s)", (QUERY,)).fetchone()[0]  # type: ignore[index]
        vectors = dict(conn.execute("SELECT document_id, embedding FROM medpg.chunks").fetchall())
        got = conn.execute(call, (QUERY, query_vector, fusion, "rocchio")).fetchall()
    cands = [Candidate(r[0], r[1], r[2], r[3], r[4]) for r in first]
    fused = fuse(cands, fusion, lexical_coverage=coverage)  # type: ignore[arg-type]
    assert {r[0]: r[5] for r in first} == pytest.approx(fused, rel=1e-12)
    top = sorted(fused, key=lambda d: (-fused[d], d))[:3]
    moved = rocchio_vector(query_vector, [vectors[d].to_numpy() for d in top], 0.8)
    moved /= np.linalg.norm(moved)
    rescored = {d: float(moved @ (v.to_numpy() / np.linalg.norm(v.to_numpy()))) for d, v in vectors.items()}
    after = feedback_candidates(cands, rescored)
    expected = fuse(after, fusion, lexical_coverage=coverage)  # type: ignore[arg-type]
    assert {r[0]: r[5] for r in got} == pytest.approx(expected, rel=1e-6)
    by_id = {c.document_id: c for c in after}
    for r in got:  # the explanation shows what was fused; the evidence chunk is the first pass's
        assert r[1] == by_id[r[0]].dense_rank and r[2] == pytest.approx(by_id[r[0]].dense_score, rel=1e-6)
    assert {r[0]: r[6] for r in got} == {r[0]: r[6] for r in first}
    assert [r[0] for r in got] == sorted(expected, key=lambda d: (-expected[d], d))


# --------------------------------------------------------------------------------------------------
# a query set where BM25 is noise: adaptive fusion follows the stronger leg

TOPICS = [
    "cardiomyopathy",
    "glaucoma",
    "psoriasis",
    "leukemia",
    "migraine",
    "osteoporosis",
    "hepatitis",
    "asthma",
    "sarcoidosis",
    "endometriosis",
    "gastroparesis",
    "hypothyroidism",
    "melanoma",
    "nephrolithiasis",
    "pancreatitis",
    "tuberculosis",
    "vitiligo",
    "anemia",
    "gout",
    "scoliosis",
]
COMMON = ["study", "patients", "effect", "trial", "outcome"]


def _misspell(word: str) -> str:
    return word[: len(word) // 2] + word[len(word) // 2 + 1 :]


def _noisy_lexical_corpus() -> tuple[list[dict[str, Any]], list[tuple[str, str, np.ndarray]]]:
    rng = random.Random(11)
    docs, queries = [], []
    for i, topic in enumerate(TOPICS):
        # common words with random counts: BM25 on them alone orders documents at random
        filler = " ".join(rng.choice(COMMON) for _ in range(rng.randint(2, 12)))
        docs.append(
            {
                "id": f"T{i}",
                "title": f"{topic.capitalize()} therapy",
                "body": f"{topic} {topic} treatment and prognosis; {filler}.",
                "vector": unit((i + 1, 1.0), (40 + i % 5, 0.6)),
            }
        )
    for i, topic in enumerate(TOPICS):
        vector = unit((i + 1, 1.0), (40 + i % 5, 0.9), (60 + i, 0.4))  # closest to T{i}, then its axis mates
        words = " ".join(rng.sample(COMMON, 2))
        queries.append((f"T{i}", f"{_misspell(topic)} {_misspell('therapy')} {words}", vector))
    return docs, queries


def _mrr(db: Database, queries: list[tuple[str, str, np.ndarray]], **kwargs: Any) -> float:
    total = 0.0
    settings = db.settings.with_changes(**kwargs.pop("settings", {}))
    for relevant, text, vector in queries:
        response = search(
            text, k=10, db=db, settings=settings, query_embedding=vector, rerank=False, **kwargs
        )
        ids = [r.external_id for r in response.results]
        total += 1 / (ids.index(relevant) + 1) if relevant in ids else 0.0
    return total / len(queries)


@pytest.fixture(scope="module")
def noisy_db(db: Database) -> Iterator[Database]:
    truncate(db)
    add_documents(db, "noisy", _noisy_lexical_corpus()[0])
    yield db


def test_adaptive_fusion_follows_the_dense_leg_when_bm25_is_noise(noisy_db: Database) -> None:
    queries = _noisy_lexical_corpus()[1]
    with noisy_db.connect() as conn:
        coverages = [
            conn.execute("SELECT medpg.lexical_coverage(%s)", (t,)).fetchone()[0] for _, t, _ in queries
        ]  # type: ignore[index]
    assert max(coverages) < 0.2  # only the common words occur: BM25 sees little of the query
    off = {"feedback": "none"}
    dense = _mrr(noisy_db, queries, mode="dense")
    lexical = _mrr(noisy_db, queries, mode="lexical")
    weighted = _mrr(noisy_db, queries, fusion="weighted", settings=off)
    adaptive = _mrr(noisy_db, queries, fusion="adaptive", settings=off)
    default = _mrr(noisy_db, queries)
    assert dense == 1.0 and lexical < 0.5  # the construction: dense strong, BM25 noise
    assert weighted < dense  # a fixed equal mix falls below its better leg ...
    assert adaptive >= dense and default >= dense  # ... adaptive fusion (and the default) does not


def test_adaptive_equals_weighted_when_the_corpus_has_every_query_word(noisy_db: Database) -> None:
    _, queries = _noisy_lexical_corpus()
    with noisy_db.connect() as conn:
        for i, (_, _, vector) in enumerate(queries[:5]):
            text = f"{TOPICS[i]} therapy"
            assert conn.execute("SELECT medpg.lexical_coverage(%s)", (text,)).fetchone()[0] == 1.0  # type: ignore[index]
            rows = {
                fusion: conn.execute(
                    "SELECT document_id, fused_score FROM medpg.hybrid_search(%s, %s, k => 20, fusion => %s,"
                    " feedback => 'none')",
                    (text, vector, fusion),
                ).fetchall()
                for fusion in ("adaptive", "weighted")
            }
            assert rows["adaptive"] == rows["weighted"]
