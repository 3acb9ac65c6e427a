"""Query text handling before PostgreSQL, the tsquery quoting mirror, and filter coercion."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medpg.errors import InputError
from medpg.retrieval.query import or_tsquery_text, prepare_query, quote_lexeme
from medpg.retrieval.types import Filters


def test_prepare_query_keeps_ordinary_and_hostile_text() -> None:
    for text in ["", "   ", "it's", "a & b | !c", ":*()", "über café 東京 😀", "x" * 10_000]:
        assert prepare_query(text, 16_384) == text


def test_prepare_query_replaces_what_postgres_cannot_store() -> None:
    assert prepare_query("a\x00b", 100) == "a b"
    assert prepare_query("lone \ud800 surrogate", 100) == "lone \ufffd surrogate"
    prepare_query("lone \ud800 surrogate", 100).encode("utf-8")


def test_prepare_query_rejects_non_strings_and_over_long_text() -> None:
    with pytest.raises(InputError, match="must be a string"):
        prepare_query(None, 100)
    with pytest.raises(InputError, match="MEDPG_MAX_QUERY_CHARS"):
        prepare_query("x" * 101, 100)


def test_quote_lexeme_escapes_quotes_and_backslashes() -> None:
    assert quote_lexeme("it's") == "'it''s'"
    assert quote_lexeme("a\\b") == "'a\\\\b'"
    assert quote_lexeme("x:*&|!()") == "'x:*&|!()'"


def test_or_tsquery_text() -> None:
    assert or_tsquery_text(["vitamin", "d"]) == "'vitamin' | 'd'"
    assert or_tsquery_text([]) is None


def test_filters_coerce_from_a_dict() -> None:
    f = Filters.coerce(
        {"source": "notes", "metadata": {"a": 1}, "date_from": "2020-01-01", "patient_ids": ["p1", "p2"]}
    )
    assert f.sources == ("notes",)
    assert f.metadata == {"a": 1}
    assert f.date_from == datetime(2020, 1, 1, tzinfo=UTC)  # no time zone: UTC, as ingest reads it
    assert f.patient_ids == ("p1", "p2")
    assert f.active
    assert not Filters.coerce(None).active


@pytest.mark.parametrize(
    "bad",
    [
        {"colour": "red"},
        {"metadata": [1, 2]},
        {"date_to": "yesterday"},
        {"sources": [1]},
        ["sources"],
        {"source": "a", "sources": ["b"]},
        {"patient_ids": "p\udcff"},
        {"metadata": {"a": {1}}},
    ],
)
def test_filters_coerce_rejects_bad_values(bad: object) -> None:
    with pytest.raises(InputError):
        Filters.coerce(bad)  # type: ignore[arg-type]
