"""Query text: what Python checks before any string reaches PostgreSQL.

Parsing happens in SQL (``medpg.query_lexemes`` / ``medpg.or_tsquery``): the text is passed as a
bound parameter and turned into lexemes by ``to_tsvector``, which accepts any string, so quotes,
``&|!:*()``, backslashes and unicode are plain text, never query syntax. Two things cannot reach
PostgreSQL at all and are handled here: NUL characters (text values cannot hold them) and lone
UTF-16 surrogates (not encodable as UTF-8). An over-long query is a clear error rather than a slow one.

``or_tsquery_text`` is the Python mirror of the quoting in ``medpg.or_tsquery``, used by tests and
by anyone building the same tsquery from known lexemes.
"""

from __future__ import annotations

from collections.abc import Iterable

from medpg.errors import InputError


def prepare_query(text: object, max_chars: int) -> str:
    """The query as PostgreSQL can take it: NULs become spaces, lone surrogates U+FFFD.

    Raises InputError for a non-string or a query over ``max_chars`` characters. An empty or
    all-stopword query is allowed: it matches nothing lexically (and dense search still works).
    """
    if not isinstance(text, str):
        raise InputError(f"the query must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise InputError(
            f"the query is {len(text):,} characters long; the limit is {max_chars:,} (MEDPG_MAX_QUERY_CHARS)"
        )
    cleaned = text.replace("\x00", " ")
    try:
        cleaned.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in cleaned)
    return cleaned


def quote_lexeme(lexeme: str) -> str:
    """A lexeme as a quoted tsquery operand: backslashes and single quotes escaped."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def or_tsquery_text(lexemes: Iterable[str]) -> str | None:
    """``'a' | 'b' | ...`` for ``text::tsquery``; None when there are no lexemes (matches nothing)."""
    parts = [quote_lexeme(lx) for lx in lexemes]
    return " | ".join(parts) if parts else None


__all__ = ["or_tsquery_text", "prepare_query", "quote_lexeme"]
