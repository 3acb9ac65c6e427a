"""Feedback: a user's judgment of one search result, recorded for ``medpg learn --feedback``.

A row of ``medpg.feedback`` holds the query text (training needs it; it is never logged or
quoted in a message), the document (medpg's id; the row goes when the document does), a grade
0-3 and its kind: ``marked`` (the user graded the result) or ``opened`` (the user opened it).
Writes run under the caller's scope: a document the scope cannot see does not exist for it, and
row-level security refuses a row about one (``100_access.sql``). Every value is checked first, as
``medpg ingest`` checks its rows: an ``InputError`` names the field and says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from medpg.access import DEFAULT_TENANT, Scope
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import InputError, NotFoundError
from medpg.retrieval import arguments

FEEDBACK_KINDS = ("marked", "opened")
MAX_GRADE = 3
MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True)
class RecordedFeedback:
    """What was recorded (never the query text)."""

    document_id: int
    grade: int
    kind: str


def check_query(query: object, max_chars: int, *, name: str = "query") -> str:
    """The query text as stored: a non-empty string of at most ``max_chars`` characters that
    PostgreSQL text can hold (no NUL, no lone surrogate). Unlike a search, which replaces NUL with a
    space, stored feedback is refused: it would not be the query the user typed."""
    if not isinstance(query, str):
        raise InputError(f"{name} must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InputError(f"{name} must not be empty or only whitespace")
    if len(query) > max_chars:
        raise InputError(
            f"{name} is {len(query):,} characters long; the limit is {max_chars:,} (MEDPG_MAX_QUERY_CHARS)"
        )
    if "\x00" in query:
        raise InputError(f"{name} contains a NUL character, which PostgreSQL text cannot hold")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{name} contains a lone surrogate (not valid Unicode)") from None
    return query


def check_grade(grade: object) -> int:
    if isinstance(grade, bool) or not isinstance(grade, int) or not 0 <= grade <= MAX_GRADE:
        raise InputError(f"grade must be an integer from 0 (not relevant) to {MAX_GRADE} (highly relevant)")
    return grade


def check_kind(kind: object) -> str:
    if kind not in FEEDBACK_KINDS:
        raise InputError(f"kind must be one of {', '.join(FEEDBACK_KINDS)}")
    return str(kind)


_FIND_BY_ID = "SELECT id FROM medpg.documents WHERE id = %s AND tenant_id = %s"
_FIND_BY_KEY = "SELECT id FROM medpg.documents WHERE tenant_id = %s AND source = %s AND external_id = %s"
_INSERT = """
INSERT INTO medpg.feedback (tenant_id, key_id, query, document_id, grade, kind)
VALUES (%s, %s, %s, %s, %s, %s)
"""


def record_feedback(
    db: Database,
    settings: Settings,
    *,
    query: object,
    grade: object,
    kind: object = "marked",
    document_id: object = None,
    source: object = None,
    external_id: object = None,
    scope: Scope | None = None,
    key_id: int | None = None,
    tenant: str | None = None,
) -> RecordedFeedback:
    """Record one judgment of a document (by medpg id, or by source and id) for a query.

    ``scope``: the caller's (the API key's); without one, the owner writes for ``tenant``
    (default 'default'). NotFoundError when the scope holds no such document; nothing is written.
    """
    text = check_query(query, settings.max_query_chars)
    grade_ = check_grade(grade)
    kind_ = check_kind(kind)
    owner = scope.tenant if scope is not None else (tenant or DEFAULT_TENANT)
    find: tuple[str, tuple[Any, ...]]
    if document_id is not None:
        if source is not None or external_id is not None:
            raise InputError("give the document as document_id or as source and id, not both")
        doc = arguments.integer(document_id, "document_id", 1, MAX_BIGINT)
        find = (_FIND_BY_ID, (doc, owner))
    else:
        if source is None or external_id is None:
            raise InputError("give the document as document_id, or as source and id")
        src = arguments.text_value(source, "source")
        ext = arguments.text_value(str(external_id) if isinstance(external_id, int) else external_id, "id")
        find = (_FIND_BY_KEY, (owner, src, ext))
    with db.connect() as conn:
        if scope is not None:
            scope.apply(conn)
        row = conn.execute(*find).fetchone()
        if row is None:
            conn.rollback()
            raise NotFoundError("no document with this id that this caller can see")
        try:
            conn.execute(_INSERT, (owner, key_id, text, int(row[0]), grade_, kind_))
        except psycopg.errors.ForeignKeyViolation:  # deleted meanwhile
            conn.rollback()
            raise NotFoundError("no document with this id that this caller can see") from None
        conn.commit()
    return RecordedFeedback(int(row[0]), grade_, kind_)


__all__ = [
    "FEEDBACK_KINDS",
    "MAX_GRADE",
    "RecordedFeedback",
    "check_grade",
    "check_kind",
    "check_query",
    "record_feedback",
]
