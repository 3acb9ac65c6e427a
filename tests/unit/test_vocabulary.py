"""The names Python accepts are the names the SQL functions accept."""

from __future__ import annotations

import re

from medpg.vocabulary import FEEDBACK_METHODS, FUSION_METHODS, LEXICAL_SCORERS, SEARCH_MODES
from tests.conftest import REPO

HYBRID = (REPO / "migrations" / "sql" / "idempotent" / "060_hybrid_search.sql").read_text()


def _checked(argument: str) -> set[str]:
    match = re.search(rf"{argument} IS NULL OR {argument} NOT IN \(([^)]*)\)", HYBRID)
    assert match, argument
    return set(re.findall(r"'([^']+)'", match.group(1)))


def test_sql_checks_the_same_vocabularies() -> None:
    assert _checked("mode") == set(SEARCH_MODES)
    assert _checked("lexical") == set(LEXICAL_SCORERS)
    assert _checked("fusion") == set(FUSION_METHODS)
    assert _checked("feedback") == set(FEEDBACK_METHODS)
