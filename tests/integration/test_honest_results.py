"""Results that say when they are less than they seem: an empty query, dense retrieval over part of
the corpus, filters no document matches, a configured cross-encoder that is not on this machine.
Vectors are written by hand (no model runs), as in test_search.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medpg.db import Database
from medpg.errors import ModelNotAvailableError
from medpg.retrieval import search
from medpg.retrieval.pipeline import EMPTY_QUERY_WARNING
from tests.conftest import truncate
from tests.integration.test_search import add_documents, toward, unit

pytestmark = pytest.mark.integration

QUERY_VECTOR = unit((0, 1.0))

DOCS: list[dict[str, Any]] = [
    {
        "id": "a",
        "title": "Statins",
        "body": "Statins and breast cancer risk.",
        "vector": toward(0.9, 1),
        "metadata": {"specialty": "Oncology"},
        "patient_id": "p-1",
    },
    {
        "id": "b",
        "title": "Fish oil",
        "body": "Fish oil and depression.",
        "vector": toward(0.5, 2),
        "metadata": {"specialty": "Psychiatry"},
    },
    {
        "id": "c",
        "title": "Walking",
        "body": "Walking and cancer survival.",
        "vector": None,
        "metadata": {"specialty": "Oncology"},
    },
    {"id": "d", "title": "Sleep", "body": "Sleep and shift work.", "vector": None},
    {"id": "e", "title": "Coffee", "body": "Coffee and liver cancer.", "vector": None},
]


@pytest.fixture(scope="module")
def honest_db(db: Database) -> Iterator[Database]:
    """Five documents of one chunk each; two chunks have a current vector (40% coverage)."""
    truncate(db)
    add_documents(db, "clinic", DOCS)
    yield db


def run(db: Database, query: str = "cancer", **kwargs: Any) -> Any:
    kwargs.setdefault("rerank", False)
    return search(query, db=db, settings=kwargs.pop("settings", db.settings), **kwargs)


# --------------------------------------------------------------------------------------------------
# empty queries


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "\x00"])
@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_empty_query_returns_nothing_and_says_why(honest_db: Database, text: str, mode: str) -> None:
    loads: list[str] = []
    response = search(
        text, mode=mode, db=honest_db, settings=honest_db.settings, rerank=False, notify=loads.append
    )
    assert response.results == []
    assert response.warnings == (EMPTY_QUERY_WARNING,)
    assert loads == []  # no model is loaded for a query with nothing in it


def test_empty_query_with_a_query_embedding_is_still_empty(honest_db: Database) -> None:
    response = run(honest_db, " ", query_embedding=QUERY_VECTOR)
    assert response.results == [] and response.warnings == (EMPTY_QUERY_WARNING,)


# --------------------------------------------------------------------------------------------------
# partial dense coverage


@pytest.mark.parametrize("mode", ["hybrid", "dense"])
def test_partial_coverage_is_reported_with_counts(honest_db: Database, mode: str) -> None:
    response = run(honest_db, mode=mode, query_embedding=QUERY_VECTOR)
    assert response.results
    coverage = [w for w in response.warnings if w.startswith("dense retrieval covered")]
    assert coverage == [
        "dense retrieval covered 2 of 5 chunks (40%); the rest have no current vector yet: "
        "run `medpg embed` (or start a worker)"
    ]


def test_lexical_search_has_no_coverage_warning(honest_db: Database) -> None:
    response = run(honest_db, mode="lexical")
    assert response.results and response.warnings == ()


def test_full_coverage_has_no_warning(honest_db: Database) -> None:
    with honest_db.connect() as conn:
        saved = conn.execute(
            "SELECT id, embedding, embedding_model, embedded_hash FROM medpg.chunks WHERE embedding IS NULL"
        ).fetchall()
        conn.execute(
            "UPDATE medpg.chunks SET embedding = (SELECT embedding FROM medpg.chunks WHERE embedding IS NOT NULL"
            " LIMIT 1), embedding_model = (SELECT model FROM medpg.embedding_space), embedded_hash = content_hash"
            " WHERE embedding IS NULL"
        )
        conn.commit()
    try:
        response = run(honest_db, query_embedding=QUERY_VECTOR)
        assert response.results and response.warnings == ()
    finally:
        with honest_db.connect() as conn:
            for chunk_id, embedding, model, embedded in saved:
                conn.execute(
                    "UPDATE medpg.chunks SET embedding = %s, embedding_model = %s, embedded_hash = %s WHERE id = %s",
                    (embedding, model, embedded, chunk_id),
                )
            conn.commit()


def test_percentages_never_round_to_none_or_all() -> None:
    from medpg.retrieval.pipeline import _percent

    assert _percent(1, 1000) == "<1%"
    assert _percent(999, 1000) == ">99%"
    assert _percent(212, 2431) == "9%"
    assert _percent(0, 10) == "0%" and _percent(10, 10) == "100%"


# --------------------------------------------------------------------------------------------------
# filters that match nothing


def test_a_source_that_matches_no_document_is_named_with_the_stored_sources(honest_db: Database) -> None:
    response = run(honest_db, mode="lexical", filters={"sources": ["mtsamples"]})
    assert response.results == []
    assert response.warnings == ("the sources filter matches no document; stored sources: clinic",)
    assert "mtsamples" not in " ".join(response.warnings)  # the value given is never quoted


def test_metadata_that_matches_no_document(honest_db: Database) -> None:
    response = run(honest_db, filters={"metadata": {"specialty": "Cardiology"}}, query_embedding=QUERY_VECTOR)
    assert response.results == []
    assert "the metadata filter matches no document" in response.warnings
    assert not any("Cardiology" in w for w in response.warnings)


def test_a_filter_that_matches_nothing_is_named_and_the_others_are_not(honest_db: Database) -> None:
    response = run(
        honest_db, mode="lexical", filters={"metadata": {"specialty": "Psychiatry"}, "patient_ids": ["p-9"]}
    )
    assert response.results == []
    assert response.warnings == ("the patient_ids filter matches no document",)


def test_filters_that_match_only_apart(honest_db: Database) -> None:
    # document b is Psychiatry, document a is patient p-1: each filter matches, both together none
    response = run(
        honest_db, mode="lexical", filters={"metadata": {"specialty": "Psychiatry"}, "patient_ids": ["p-1"]}
    )
    assert response.results == []
    assert response.warnings == (
        "no document matches all the filters together (each matches some documents alone)",
    )


def test_no_results_within_matching_filters_has_no_filter_warning(honest_db: Database) -> None:
    response = run(honest_db, "walking", mode="lexical", filters={"metadata": {"specialty": "Psychiatry"}})
    assert response.results == [] and response.warnings == ()


def test_filters_with_results_run_no_check(honest_db: Database) -> None:
    response = run(
        honest_db, mode="lexical", filters={"sources": ["clinic"], "metadata": {"specialty": "Oncology"}}
    )
    assert response.results and response.warnings == ()


def test_a_date_range_that_matches_nothing(honest_db: Database) -> None:
    response = run(honest_db, mode="lexical", filters={"date_from": "2001-01-01"})
    assert response.results == [] and response.warnings == (
        "the date_from/date_to filter matches no document",
    )


# --------------------------------------------------------------------------------------------------
# a configured cross-encoder that is not on this machine


@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
def test_automatic_rerank_skips_a_missing_cross_encoder(
    honest_db: Database, tmp_path: Path, mode: str
) -> None:
    missing = tmp_path / "no-such-reranker"
    settings = honest_db.settings.with_changes(cross_encoder_model=str(missing), rerank_top_k=5)
    loads: list[str] = []
    response = search(
        "cancer",
        mode=mode,
        db=honest_db,
        settings=settings,
        query_embedding=QUERY_VECTOR,
        notify=loads.append,
    )
    assert response.results and not response.reranked
    skipped = [w for w in response.warnings if "cross-encoder" in w]
    assert len(skipped) == 1 and str(missing) in skipped[0] and "not reranked" in skipped[0]
    assert "MEDPG_CROSS_ENCODER_MODEL=none" in skipped[0]
    assert loads == []


def test_required_rerank_with_a_missing_cross_encoder_fails_clearly(
    honest_db: Database, tmp_path: Path
) -> None:
    settings = honest_db.settings.with_changes(cross_encoder_model=str(tmp_path / "gone"), rerank_top_k=5)
    with pytest.raises(ModelNotAvailableError) as info:
        search("cancer", mode="lexical", db=honest_db, settings=settings, rerank=True)
    message = str(info.value)
    assert (
        "reranking was requested" in message and "cross-encoder" in message and "cross model" not in message
    )


def test_automatic_rerank_with_a_present_cross_encoder_reranks(
    honest_db: Database, tiny_cross_encoder_dir: Path
) -> None:
    settings = honest_db.settings.with_changes(
        cross_encoder_model=str(tiny_cross_encoder_dir), rerank_top_k=5
    )
    loads: list[str] = []
    response = search("cancer", mode="lexical", db=honest_db, settings=settings, notify=loads.append)
    assert response.reranked and loads == ["loading the cross-encoder..."]
    nothing = search("zzzz", mode="lexical", db=honest_db, settings=settings, notify=loads.append)
    assert nothing.results == [] and loads == [
        "loading the cross-encoder..."
    ]  # nothing to rerank: not loaded
