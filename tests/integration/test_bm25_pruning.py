"""Pruned BM25 (medpg.bm25_search) returns what exhaustive BM25 (medpg.bm25_search_exact) returns.

The corpus has a Zipf-like vocabulary, so some query terms occur in most documents and their
postings span many blocks, and it is written in statements of different sizes, with patients,
sources and metadata, so blocks differ in size and owner. ``medpg.bm25_exhaustive_postings = 0``
forces pruning on every query (by default a query with few postings is scored exhaustively).
Scores are compared with a relative tolerance: the pruned and the exhaustive search add the same
terms in a different order, which can change the last bit of a score and so the order of documents
whose scores tie.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from medpg.access import Scope
from medpg.db import Database

pytestmark = pytest.mark.integration

VOCABULARY = [
    "patient",
    "cancer",
    "breast",
    "vitamin",
    "therapy",
    "risk",
    "cardiac",
    "insulin",
    "diabetes",
    "renal",
    "kidney",
    "liver",
    "statin",
    "cholesterol",
    "stroke",
    "asthma",
    "infection",
    "sepsis",
    "fever",
    "pain",
    "opioid",
    "dose",
    "trial",
    "cohort",
    "mortality",
    "screening",
    "colon",
    "lung",
    "tumor",
    "chemotherapy",
    "radiation",
    "surgery",
    "wound",
    "fracture",
    "bone",
    "anemia",
    "iron",
    "folate",
    "pregnancy",
    "infant",
    "growth",
    "obesity",
    "diet",
    "coffee",
    "tea",
    "alcohol",
    "smoking",
    "nicotine",
    "depression",
    "anxiety",
    "sleep",
    "memory",
    "dementia",
    "seizure",
    "migraine",
    "thyroid",
    "hormone",
    "estrogen",
    "prostate",
    "vaccine",
    "influenza",
    "measles",
    "antibiotic",
    "resistance",
    "biopsy",
    "lesion",
    "marker",
    "protein",
    "gene",
    "mutation",
]
REL = 1e-9


def _zipf_word(rng: random.Random) -> str:
    # P(rank r) ~ 1 / r: the first words are in most documents, the last in few.
    weights = [1 / (r + 1) for r in range(len(VOCABULARY))]
    return rng.choices(VOCABULARY, weights)[0]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(_zipf_word(rng) for _ in range(rng.randint(lo, hi)))


def _insert(conn: Any, rng: random.Random, start: int, count: int, patient: str | None) -> None:
    rows = []
    for i in range(start, start + count):
        title = _text(rng, 0, 6)
        body = _text(rng, 3, 60)
        rows.append(
            (
                "notes" if patient else rng.choice(["pubmed", "trials"]),
                f"d{i}",
                title,
                body,
                hashlib.sha256((title + body).encode()).digest(),
                patient,
                orjson.dumps({"kind": rng.choice(["rct", "review", "case"])}).decode(),
            )
        )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash, patient_id, metadata)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
            rows,
        )


@pytest.fixture(scope="module")
def corpus(db: Database) -> Iterator[Database]:
    rng = random.Random(14)
    with db.connect() as conn:
        start = 0
        # Statements of 1,800, 700 and 1,200 documents: blocks of 1,000 and smaller ones.
        for count in (1800, 700, 1200):
            _insert(conn, rng, start, count, None)
            start += count
        # Patients' notes: each patient's documents in their own blocks.
        for p in range(12):
            _insert(conn, rng, start, rng.randint(5, 40), f"p{p}")
            start += 40
        conn.commit()
    yield db


def _run(conn: Any, fn: str, query: str, n: int, **kwargs: Any) -> list[tuple[int, int | None, float]]:
    args = ", ".join(f"{k} => %({k})s" for k in kwargs)
    sql = f"SELECT document_id, rank, score FROM medpg.{fn}(%(q)s, %(n)s{', ' + args if args else ''})"
    return [tuple(r) for r in conn.execute(sql, {"q": query, "n": n, **kwargs}).fetchall()]


def _assert_same(pruned: list[Any], exact: list[Any], wider: list[Any]) -> None:
    """Same ranked scores; the same documents except among ties; the same scores for ``also``."""
    ranked_p = [r for r in pruned if r[1] is not None]
    ranked_e = [r for r in exact if r[1] is not None]
    assert [r[1] for r in ranked_p] == list(range(1, len(ranked_p) + 1))
    assert len(ranked_p) == len(ranked_e)
    for p, e in zip(ranked_p, ranked_e, strict=True):
        assert math.isclose(p[2], e[2], rel_tol=REL), (p, e)
    # A document the exact search left out must tie with one it kept (within REL): it is found
    # among the exact search's wider list with (nearly) the same score.
    wide = {r[0]: r[2] for r in wider if r[1] is not None}
    for p in ranked_p:
        assert p[0] in wide, p
        assert math.isclose(wide[p[0]], p[2], rel_tol=REL), (p, wide[p[0]])
    also_p = {r[0]: r[2] for r in pruned if r[1] is None}
    also_e = {r[0]: r[2] for r in exact if r[1] is None}
    # A wanted document ranked by one and not the other (a tie at the boundary) is compared by score.
    for doc in set(also_p) ^ set(also_e):
        score = also_p.get(doc, also_e.get(doc))
        assert score is not None and ranked_e and math.isclose(score, ranked_e[-1][2], rel_tol=REL)
    for doc in set(also_p) & set(also_e):
        assert math.isclose(also_p[doc], also_e[doc], rel_tol=REL, abs_tol=1e-12), doc


def _compare(conn: Any, query: str, n: int, **kwargs: Any) -> list[Any]:
    conn.execute("SET medpg.bm25_exhaustive_postings = 0")
    pruned = _run(conn, "bm25_search", query, n, **kwargs)
    exact = _run(conn, "bm25_search_exact", query, n, **kwargs)
    wider = _run(conn, "bm25_search_exact", query, min(n + 200, 10000), **kwargs)
    _assert_same(pruned, exact, wider)
    return pruned


queries = st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=6).map(" ".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=queries,
    n=st.sampled_from([1, 3, 10, 50, 300]),
    k1=st.sampled_from([1e-6, 0.9, 1.2, 2.0]),
    b=st.sampled_from([0.0, 0.5, 0.75, 1.0]),
    title_weight=st.sampled_from([1e-6, 0.5, 1.0, 2.0, 3.5]),
)
def test_pruned_equals_exact(
    corpus: Database, query: str, n: int, k1: float, b: float, title_weight: float
) -> None:
    with corpus.connect() as conn:
        got = _compare(conn, query, n, k1=k1, b=b, title_weight=title_weight)
        conn.rollback()
    assert got  # every vocabulary word occurs somewhere


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=queries,
    n=st.sampled_from([1, 10, 100]),
    filters=st.sampled_from(
        [
            {"sources": ["trials"]},
            {"metadata_contains": {"kind": "case"}},
            {"patient_ids": ["p3"]},
            {"patient_ids": ["p1", "p7", "nobody"]},
            {"sources": ["notes"], "metadata_contains": {"kind": "rct"}},
            {"date_from": "2000-01-01"},
        ]
    ),
)
def test_pruned_equals_exact_with_filters(
    corpus: Database, query: str, n: int, filters: dict[str, Any]
) -> None:
    kwargs = {k: Jsonb(v) if k == "metadata_contains" else v for k, v in filters.items()}
    with corpus.connect() as conn:
        _compare(conn, query, n, **kwargs)
        conn.rollback()


def test_also_documents_get_their_exact_scores(corpus: Database) -> None:
    with corpus.connect() as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM medpg.documents ORDER BY id").fetchall()]
        also = ids[::97] + [10**12]  # every 97th document and one that does not exist
        got = _compare(conn, "insulin diabetes renal", 5, also=also)
        conn.rollback()
    wanted = {r[0] for r in got if r[1] is None}
    assert 10**12 in wanted
    assert len(wanted) >= len(also) - 5


def test_patient_scope_prunes_within_what_it_sees(corpus: Database) -> None:
    """Under row-level security the statistics and blocks are the caller's: still equal to exact."""
    with corpus.connect() as conn:
        Scope("default", ("p2", "p5")).apply(conn)
        got = _compare(conn, "patient cancer therapy", 10)
        visible = {r[0] for r in conn.execute("SELECT id FROM medpg.documents").fetchall()}
        conn.rollback()
    assert got and {r[0] for r in got} <= visible
    with corpus.connect() as conn:
        Scope("default").apply(conn)
        _compare(conn, "patient cancer therapy vitamin", 20)
        conn.rollback()


def _assert_bounds_exact(conn: Any) -> None:
    wrong = conn.execute(
        """
        SELECT count(*) FROM medpg.lexical_blocks b
        WHERE b.n_docs <> cardinality(b.document_ids)
           OR b.max_tf <> (SELECT max(x) FROM unnest(b.tf) x)
           OR b.max_tf_title <> (SELECT max(x) FROM unnest(b.tf_title) x)
           OR b.min_dl <> (SELECT min(x) FROM unnest(b.dl) x)
           OR b.min_dl_title <> (SELECT min(x) FROM unnest(b.dl_title) x)
        """
    ).fetchone()
    assert wrong is not None and wrong[0] == 0


def test_bounds_stay_exact_after_updates_and_deletes(corpus: Database) -> None:
    rng = random.Random(3)
    with corpus.connect() as conn:
        _assert_bounds_exact(conn)
        # Shorten some documents (smaller dl: a bound that stayed put would be too low), lengthen
        # others, delete a slice, all in plain SQL.
        conn.execute("UPDATE medpg.documents SET body = 'insulin insulin insulin' WHERE id % 53 = 0")
        conn.execute(
            "UPDATE medpg.documents SET body = body || ' ' || %s WHERE id %% 31 = 0", (_text(rng, 40, 40),)
        )
        conn.execute("DELETE FROM medpg.documents WHERE id % 17 = 0")
        conn.commit()
        _assert_bounds_exact(conn)
        for query in ("insulin", "insulin patient", "cancer breast gene mutation", "coffee tea"):
            for n in (1, 10, 100):
                _compare(conn, query, n)
        conn.rollback()


def test_default_threshold_picks_the_exact_path_for_rare_terms(corpus: Database) -> None:
    with corpus.connect() as conn:
        conn.execute("RESET medpg.bm25_exhaustive_postings")
        rare = _run(conn, "bm25_search", "mutation gene", 10)
        exact = _run(conn, "bm25_search_exact", "mutation gene", 10)
        conn.rollback()
    assert rare == exact  # the same function ran: identical to the last bit


def test_a_patient_filter_prunes_even_with_few_postings(corpus: Database) -> None:
    """The exact function would read every patient's postings; the pruned one reads the patient's."""
    with corpus.connect() as conn:
        conn.execute("RESET medpg.bm25_exhaustive_postings")
        for query in ("mutation gene", "patient cancer"):
            pruned = _run(conn, "bm25_search", query, 10, patient_ids=["p4"])
            exact = _run(conn, "bm25_search_exact", query, 10, patient_ids=["p4"])
            assert [d for d, _, _ in pruned] == [d for d, _, _ in exact]
            assert all(math.isclose(p[2], e[2], rel_tol=REL) for p, e in zip(pruned, exact, strict=True))
        conn.rollback()


def test_query_without_known_terms_is_empty(corpus: Database) -> None:
    with corpus.connect() as conn:
        conn.execute("SET medpg.bm25_exhaustive_postings = 0")
        assert _run(conn, "bm25_search", "xylophone the of", 10) == []
        assert _run(conn, "bm25_search", "", 10) == []
        conn.rollback()
