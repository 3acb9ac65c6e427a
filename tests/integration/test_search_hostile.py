"""Hostile and unlucky search arguments: every bad value is an InputError naming the argument (SQLSTATE
22023 from the SQL functions), no filter value or query text in messages, BM25 that cannot divide
by zero, and a property test over any arguments that leaves the database as it was.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from medpg.db import Database
from medpg.errors import InputError
from medpg.retrieval import Filters, search
from tests.conftest import truncate
from tests.integration.test_search import add_documents, unit

pytestmark = pytest.mark.integration

PHI = "p445566-John-Smith"
DOCS = [
    {
        "id": f"h{i}",
        "title": f"chest pain note {i}",
        "body": f"patient with chest pain and {['angina', 'reflux', 'anxiety'][i % 3]} {i}",
        "metadata": {"dept": ["cardio", "gi"][i % 2], "n": i, "tags": ["a", "b"]},
        "patient_id": PHI if i == 0 else f"p{i}",
        "date": datetime(2020, 1 + i % 12, 1, tzinfo=UTC),
        "vector": unit((0, 1.0), (1 + i, 0.5)),
    }
    for i in range(12)
]
EMBEDDING = unit((0, 1.0))


@pytest.fixture(scope="module")
def hdb(db: Database) -> Iterator[Database]:
    truncate(db)
    add_documents(db, "ward", DOCS)
    yield db


def run(db: Database, query: str = "chest pain", **kwargs: Any) -> Any:
    kwargs.setdefault("mode", "lexical")
    kwargs.setdefault("rerank", False)
    return search(query, db=db, settings=kwargs.pop("settings", db.settings), **kwargs)


def snapshot(db: Database) -> tuple[Any, ...]:
    """Everything a search could change by mistake, as one comparable value."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT (SELECT md5(string_agg(d::text, ',' ORDER BY d.id)) FROM medpg.documents d),"
            " (SELECT md5(string_agg(c::text, ',' ORDER BY c.id)) FROM medpg.chunks c),"
            " (SELECT md5(string_agg(s::text, ',' ORDER BY s::text)) FROM medpg.lexical_stats s),"
            " (SELECT count(*) FROM medpg.lexical_postings)"
        ).fetchone()
    assert row is not None
    return tuple(row)


# --------------------------------------------------------------------------------------------------
# failure 4: every argument checked in Python


@pytest.mark.parametrize(
    ("filters", "named"),
    [
        ({"sources": ["ward\udcff"]}, "sources"),
        ({"patient_ids": ["p\udcff"]}, "patient_ids"),
        ({"patient_id": "p\x00x"}, "patient_ids"),
        ({"sources": b"ward"}, "sources"),
        ({"sources": {"ward"}}, "sources"),
        ({"patient_ids": [1]}, "patient_ids"),
        ({"metadata": {1: "x"}}, "metadata"),
        ({"metadata": {"a": {1, 2}}}, "metadata"),
        ({"metadata": {"a": b"x"}}, "metadata"),
        ({"metadata": {"a": 2**64}}, "metadata"),
        ({"metadata": {"a": -(2**63) - 1}}, "metadata"),
        ({"metadata": {"a": float("nan")}}, "metadata"),
        ({"metadata": {"a": float("inf")}}, "metadata"),
        ({"metadata": {"a": "x\udcff"}}, "metadata"),
        ({"metadata": {"a\x00": "x"}}, "metadata"),
        ({"metadata": {"a": datetime(2020, 1, 1)}}, "metadata"),
        ({"metadata": "dept"}, "metadata"),
        ({"date_from": "yesterday"}, "date_from"),
        ({"date_to": 20200101}, "date_to"),
        ({"date_from": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))}, "date_from"),
        ({"date_to": "9999-12-31T23:00:00-14:00"}, "date_to"),
        ({1: "x"}, "unknown filter"),
    ],
    ids=lambda v: repr(v)[:60],
)
def test_bad_filters_are_input_errors_naming_the_filter(hdb: Database, filters: Any, named: str) -> None:
    with pytest.raises(InputError, match=named):
        run(hdb, filters=filters)


def test_filters_built_directly_are_checked_too(hdb: Database) -> None:
    with pytest.raises(InputError, match="patient_ids"):
        run(hdb, filters=Filters(patient_ids=("p\udcff",)))
    with pytest.raises(InputError, match="metadata"):
        Filters(metadata={"a": {1}})


def test_nesting_is_limited_to_32_levels(hdb: Database) -> None:
    def nested(levels: int) -> dict[str, Any]:
        value: Any = "cardio"
        for _ in range(levels - 1):
            value = {"x": value}
        return {"dept": value} if levels else {}

    run(hdb, filters={"metadata": nested(32)})
    for levels in (33, 2000):
        with pytest.raises(InputError, match="nested deeper than 32"):
            run(hdb, filters={"metadata": nested(levels)})


def test_good_filters_still_work(hdb: Database) -> None:
    both = run(
        hdb, k=20, filters={"metadata": {"dept": "cardio", "tags": ("a",)}, "patient_ids": [PHI, "p2"]}
    )
    assert [r.external_id for r in both.results] == ["h0", "h2"]
    dated = run(hdb, k=20, filters={"date_from": date(2020, 3, 1), "date_to": "2020-04-01T00:00:00"})
    assert sorted(r.external_id for r in dated.results) == ["h2"]
    east = run(
        hdb, k=20, filters={"date_from": "2020-03-01T09:00:00+10:00", "date_to": "2020-03-01T00:00:01Z"}
    )
    assert [r.external_id for r in east.results] == ["h2"]


@pytest.mark.parametrize("candidates", [2**31, 1.5, 0, -1, True, "10", 10_001])
def test_bad_candidates_are_input_errors(hdb: Database, candidates: object) -> None:
    with pytest.raises(InputError, match="candidates"):
        run(hdb, candidates=candidates)


def test_candidates_none_is_the_default_and_the_maximum_works(hdb: Database) -> None:
    assert run(hdb, candidates=None).results
    assert run(hdb, candidates=10_000, mode="hybrid", query_embedding=EMBEDDING).results
    assert run(hdb, candidates=np.int64(5)).results


@pytest.mark.parametrize("k", [0, 1001, 1.5, True, "3", None])
def test_bad_k_is_an_input_error(hdb: Database, k: object) -> None:
    with pytest.raises(InputError, match="k must be"):
        run(hdb, k=k)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": ["lexical"]},
        {"lexical": None, "fusion": 3},
        {"rerank": "yes"},
        {"mode": "hybrid", "query_embedding": np.full(384, np.nan)},
        {"mode": "hybrid", "query_embedding": np.ones((2, 384))},
        {"mode": "hybrid", "query_embedding": ["a"] * 384},
        {"mode": "hybrid", "query_embedding": np.ones(3)},
    ],
    ids=lambda v: repr(v)[:60],
)
def test_other_bad_arguments_are_input_errors(hdb: Database, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        run(hdb, **kwargs)


def test_cli_prints_one_line_for_an_undecodable_patient_id(hdb: Database, tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(
        MEDPG_DATABASE_URL=str(hdb.settings.database_url),
        MEDPG_MODEL_PROFILE="minilm",
        MEDPG_DATA_DIR=str(tmp_path),
        MEDPG_RERANK_TOP_K="0",
    )
    argv = [
        sys.executable.encode(),
        b"-m",
        b"medpg.cli",
        b"search",
        b"chest pain",
        b"--mode",
        b"lexical",
        b"--patient",
        b"p\xff",
    ]
    out = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    stderr = out.stderr.decode("utf-8", "replace").strip()
    assert out.returncode == InputError.exit_code, stderr
    assert len(stderr.splitlines()) == 1 and "patient_ids" in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------------------------------------
# failure 5: BM25 settings that would divide by zero are refused; the SQL cannot divide by zero


@pytest.mark.parametrize(
    "bad",
    [
        {"bm25_title_weight": 0, "bm25_b": 1},
        {"bm25_k1": 0},
        {"bm25_b": 1.5},
        {"bm25_k1": float("inf")},
        {"bm25_title_weight": float("nan")},
        {"dense_weight": float("nan")},
        {"lexical_weight": float("inf")},
        {"rrf_k": 2**31},
        {"rrf_k": 0},
        {"feedback": "relevance"},
        {"feedback_docs": 0},
        {"feedback_docs": 1001},
        {"feedback_weight": -0.5},
        {"feedback_weight": float("nan")},
        {"feedback_weight": 1001.0},
        {"fusion": "borda"},
    ],
    ids=lambda v: repr(v)[:60],
)
def test_settings_refuse_bm25_and_fusion_values_sql_cannot_use(
    make_settings: Any, bad: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        make_settings(**bad)


def test_a_title_only_document_scores_under_extreme_valid_settings(hdb: Database) -> None:
    with hdb.connect() as conn:
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash)"
            " VALUES ('t', 'title-only', 'zygomycosis', '', '\\x00')"
        )
        try:
            for k1, b, w in [(1e-6, 1.0, 1e-6), (1000, 1.0, 1000), (2.0, 0.0, 1e-6)]:
                rows = conn.execute(
                    "SELECT score FROM medpg.bm25_scores('zygomycosis', %s, %s, %s)", (k1, b, w)
                ).fetchall()
                assert len(rows) == 1 and np.isfinite(rows[0][0]) and rows[0][0] > 0
            for k1, b, w in [(2.0, 1.0, 0.0), (0.0, 0.5, 2.0)]:
                with pytest.raises(psycopg.errors.InvalidParameterValue):
                    conn.execute("SELECT * FROM medpg.bm25_scores('zygomycosis', %s, %s, %s)", (k1, b, w))
                conn.rollback()
        finally:
            conn.rollback()


# --------------------------------------------------------------------------------------------------
# the SQL functions check their own arguments: SQLSTATE 22023 naming the argument

BAD_SQL_CALLS = [
    ("n", "SELECT * FROM medpg.bm25_search('chest', 0)"),
    ("n", "SELECT * FROM medpg.bm25_search('chest', 10001)"),
    ("n", "SELECT * FROM medpg.bm25_search('chest', 2147483647)"),
    ("n", "SELECT * FROM medpg.bm25_search('chest', NULL)"),
    ("k1", "SELECT * FROM medpg.bm25_search('chest', 5, 0)"),
    ("k1", "SELECT * FROM medpg.bm25_scores('chest', -1)"),
    ("k1", "SELECT * FROM medpg.bm25_scores('no such words here', 'NaN')"),
    ("k1", "SELECT * FROM medpg.bm25_scores('chest', 1e300)"),
    ("k1", "SELECT * FROM medpg.bm25_scores('chest', 1e-7)"),
    ("b", "SELECT * FROM medpg.bm25_scores('chest', 2, 1.5)"),
    ("b", "SELECT * FROM medpg.bm25_scores('chest', 2, -0.1)"),
    ("title_weight", "SELECT * FROM medpg.bm25_scores('chest', 2, 1, 0)"),
    ("title_weight", "SELECT * FROM medpg.bm25_scores('', 2, 1, 'Infinity')"),
    ("n", "SELECT * FROM medpg.ts_rank_search('chest', -5)"),
    ("n", "SELECT * FROM medpg.ts_rank_search('chest', 2147483647)"),
    ("normalization", "SELECT * FROM medpg.ts_rank_search('chest', 5, false, 64)"),
    ("normalization", "SELECT * FROM medpg.ts_rank_search('chest', 5, true, -1)"),
    ("n", "SELECT * FROM medpg.dense_search(%(e)s, 0)"),
    ("n", "SELECT * FROM medpg.dense_search(%(e)s, 2147483647)"),
    ("ef_search", "SELECT * FROM medpg.dense_search(%(e)s, 5, 0)"),
    ("ef_search", "SELECT * FROM medpg.dense_search(%(e)s, 5, 1001)"),
    ("k", "SELECT * FROM medpg.hybrid_search('chest', NULL, k => 0, mode => 'lexical')"),
    ("k", "SELECT * FROM medpg.hybrid_search('chest', NULL, k => 2147483647, mode => 'lexical')"),
    (
        "candidates",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, candidates => 2147483647, mode => 'lexical')",
    ),
    ("candidates", "SELECT * FROM medpg.hybrid_search('chest', NULL, candidates => 0, mode => 'lexical')"),
    ("rrf_k", "SELECT * FROM medpg.hybrid_search('chest', NULL, rrf_k => 0, mode => 'lexical')"),
    ("rrf_k", "SELECT * FROM medpg.hybrid_search('chest', NULL, rrf_k => 2147483647, mode => 'lexical')"),
    (
        "dense_weight",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, dense_weight => -1, mode => 'lexical')",
    ),
    (
        "lexical_weight",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, lexical_weight => 'NaN', mode => 'lexical')",
    ),
    (
        "k1",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, k1 => 0, mode => 'lexical', lexical => 'ts_rank')",
    ),
    ("b", "SELECT * FROM medpg.hybrid_search('chest', NULL, b => 'NaN', mode => 'lexical')"),
    (
        "title_weight",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, title_weight => 0, mode => 'lexical')",
    ),
    ("ef_search", "SELECT * FROM medpg.hybrid_search('chest', NULL, ef_search => 0, mode => 'lexical')"),
    (
        "ts_rank_normalization",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, ts_rank_normalization => 99, mode => 'lexical')",
    ),
    ("fusion", "SELECT * FROM medpg.hybrid_search('chest', NULL, fusion => 'borda', mode => 'lexical')"),
    ("fusion", "SELECT * FROM medpg.hybrid_search('chest', NULL, fusion => NULL, mode => 'lexical')"),
    ("feedback", "SELECT * FROM medpg.hybrid_search('chest', NULL, feedback => 'rm3', mode => 'lexical')"),
    ("feedback", "SELECT * FROM medpg.hybrid_search('chest', %(e)s, feedback => NULL)"),
    (
        "feedback_docs",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, feedback_docs => 0, mode => 'lexical')",
    ),
    ("feedback_docs", "SELECT * FROM medpg.hybrid_search('chest', %(e)s, feedback_docs => 1001)"),
    (
        "feedback_weight",
        "SELECT * FROM medpg.hybrid_search('chest', NULL, feedback_weight => -1, mode => 'dense')",
    ),
    ("feedback_weight", "SELECT * FROM medpg.hybrid_search('chest', %(e)s, feedback_weight => 'NaN')"),
    ("feedback_weight", "SELECT * FROM medpg.hybrid_search('chest', %(e)s, feedback_weight => 'Infinity')"),
    ("n", "SELECT * FROM medpg.bm25_search('chest', %(n)s)"),
    ("n", "SELECT * FROM medpg.ts_rank_search('chest', %(n)s)"),
    ("candidates", "SELECT * FROM medpg.hybrid_search('chest', %(e)s, candidates => %(n)s)"),
]


@pytest.mark.parametrize(("argument", "statement"), BAD_SQL_CALLS, ids=lambda v: str(v)[:70])
def test_sql_functions_refuse_bad_arguments_with_22023(hdb: Database, argument: str, statement: str) -> None:
    with hdb.connect() as conn:
        params = {"e": EMBEDDING, "n": 0}
        with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
            conn.execute(statement, params if "%(" in statement else None)
        conn.rollback()
    assert err.value.sqlstate == "22023"
    assert argument in str(err.value.diag.message_primary)


def test_sql_functions_accept_their_limits(hdb: Database) -> None:
    with hdb.connect() as conn:
        for statement in [
            "SELECT * FROM medpg.bm25_search('chest', 10000, 1000, 0, 1000)",
            "SELECT * FROM medpg.bm25_search('chest', 1, 1e-6, 1, 1e-6)",
            "SELECT * FROM medpg.ts_rank_search('chest', 10000, true, 63)",
            "SELECT * FROM medpg.dense_search(%(e)s, 10000, 1000)",
            "SELECT * FROM medpg.dense_search(%(e)s, 1, 1)",
            "SELECT * FROM medpg.hybrid_search('chest', %(e)s, k => 10000, candidates => 10000, rrf_k => 10000,"
            " fusion => 'rrf', dense_weight => 1000, lexical_weight => 0)",
            "SELECT * FROM medpg.hybrid_search('chest', %(e)s, feedback_docs => 1000, feedback_weight => 1000)",
            "SELECT * FROM medpg.hybrid_search('chest', %(e)s, feedback_docs => 1, feedback_weight => 0)",
            "SELECT * FROM medpg.hybrid_search('chest', %(e)s, fusion => 'weighted', feedback => 'none')",
            "SELECT * FROM medpg.hybrid_search('chest', %(e)s, fusion => 'adaptive', candidates => 1)",
        ]:
            assert conn.execute(statement, {"e": EMBEDDING} if "%(" in statement else None).fetchall()
        conn.rollback()


# --------------------------------------------------------------------------------------------------
# failure 6, search side: no filter value or query text in messages and logs unless MEDPG_LOG_TEXT


def test_filter_errors_do_not_echo_the_value(hdb: Database) -> None:
    for filters in (
        {"date_from": f"patient {PHI}"},
        {"patient_ids": [PHI + "\udcff"]},
        {"metadata": {"patient": {PHI}}},
        {"sources": [PHI, 7]},
    ):
        with pytest.raises(InputError) as err:
            run(hdb, filters=filters)
        assert PHI not in str(err.value) and "John" not in str(err.value)


def test_query_text_is_logged_only_with_log_text(hdb: Database, caplog: pytest.LogCaptureFixture) -> None:
    secret = "chest pain of John Smith mrn 445566"
    with caplog.at_level(logging.DEBUG, logger="medpg"):
        run(hdb, secret)
    assert caplog.records and not any("445566" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="medpg"):
        run(hdb, secret, settings=hdb.settings.with_changes(log_text=True))
    assert any("445566" in r.getMessage() for r in caplog.records)


def test_database_errors_do_not_echo_text(hdb: Database) -> None:
    from medpg.retrieval.sql import error_message

    with hdb.connect() as conn:
        with pytest.raises(psycopg.DataError) as err:
            conn.execute("SELECT %s::integer", (f"John Smith {PHI}",))
        conn.rollback()
    assert PHI not in error_message(err.value, log_text=False)
    assert "22P02" in error_message(err.value, log_text=False)
    assert PHI in error_message(err.value, log_text=True)


# --------------------------------------------------------------------------------------------------
# property test: any arguments give a response or an InputError, and change nothing

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=()), max_size=8),
    st.binary(max_size=4),
)
json_ish = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner),
        st.frozensets(st.integers(), max_size=2),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=3),
    ),
    max_leaves=12,
)
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
clean_text = st.text(st.characters(exclude_characters="\x00"), max_size=20)
filter_strings = st.one_of(
    st.sampled_from([PHI, "ward", "p3"]),
    st.lists(st.one_of(clean_text, st.sampled_from([PHI, "ward", "p3"])), max_size=3),
    clean_text,
    any_text,
    st.lists(any_text, max_size=3),
    scalars,
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        clean_text,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(clean_text, inner, max_size=3)),
    max_leaves=8,
)
metadata_filters = st.one_of(
    st.sampled_from([{"dept": "cardio"}, {"tags": ["a"]}, {"n": 3}, {}]),
    st.dictionaries(clean_text, json_values, max_size=3),
    st.dictionaries(st.text(max_size=5), json_ish, max_size=3),
    json_ish,
)
dates = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.timezones(), st.just(timezone(timedelta(hours=14))))),
    st.dates(),
    st.sampled_from(
        ["2020-01-01", "2020-06-01T12:00:00+02:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
    ),
    any_text,
    scalars,
)
queries = st.one_of(
    st.sampled_from(["chest pain", "angina", "reflux anxiety", "the and of"]),
    any_text,
    st.sampled_from(
        [
            "' OR 1=1; DROP TABLE medpg.documents; --",
            "chest & !pain | (angina:*)",
            "'chest':A <-> \"pain\"",
            "$$ $body$ \\ \\\\",
            "chest\x00pain \ud800",
            "x" * 10_000,
            "chest pain " * 1_400,
            "%s %(x)s {0}",
        ]
    ),
)
filters = st.fixed_dictionaries(
    {},
    optional={
        "sources": filter_strings,
        "patient_ids": filter_strings,
        "metadata": metadata_filters,
        "date_from": dates,
        "date_to": dates,
    },
)
edge_integers = st.one_of(
    st.sampled_from([0, -1, 1001, 10_001, 2**31 - 1, 2**31, 2**63, -(2**63), True]),
    st.floats(allow_nan=True),
    st.text(max_size=3),
)
ks = st.one_of(st.integers(1, 20), st.sampled_from([1, 1000]), edge_integers)
candidate_counts = st.one_of(st.none(), st.integers(1, 50), st.sampled_from([1, 10_000]), edge_integers)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=queries,
    filt=filters,
    k=ks,
    candidates=candidate_counts,
    mode=st.sampled_from(["lexical", "lexical", "hybrid", "dense", "fuzzy"]),
    lexical=st.sampled_from(["bm25", "ts_rank", None]),
    fusion=st.sampled_from(["rrf", "weighted", None]),
)
def test_any_search_arguments_give_a_response_or_an_input_error(
    hdb: Database,
    query: str,
    filt: dict[str, Any],
    k: Any,
    candidates: Any,
    mode: str,
    lexical: str | None,
    fusion: str | None,
) -> None:
    before = _SNAPSHOT.setdefault(id(hdb), snapshot(hdb))
    try:
        response = search(
            query,
            k=k,
            mode=mode,
            lexical=lexical,
            fusion=fusion,
            filters=filt,
            rerank=False,
            candidates=candidates,
            query_embedding=EMBEDDING if mode != "lexical" else None,
            db=hdb,
            settings=hdb.settings,
        )
    except InputError as exc:
        event("InputError")
        str(exc).encode("utf-8")  # printable as one line
        assert PHI not in str(exc)
    else:
        event("response with results" if response.results else "empty response")
        assert len(response.results) <= k
    assert snapshot(hdb) == before


_SNAPSHOT: dict[int, tuple[Any, ...]] = {}
