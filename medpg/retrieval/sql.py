"""Calls into the SQL search functions; no retrieval logic lives here.

Everything ranks inside ``medpg.hybrid_search`` (defined by the migrations, ``migrations/sql/``);
this module binds parameters, maps PostgreSQL errors to MedpgError, and fetches what the results
display (titles, evidence passages). Every statement is a constant with bound parameters: nothing
is pasted into SQL text, so no query or filter value can change a statement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson
import psycopg
from psycopg.types.json import Jsonb

from medpg.errors import BackendUnavailableError, DatabaseError, InputError
from medpg.privacy import shown
from medpg.retrieval.types import Filters


@dataclass(frozen=True)
class SearchParams:
    """Everything ``medpg.hybrid_search`` takes besides the query and its embedding."""

    k: int
    mode: str
    candidates: int
    lexical: str
    fusion: str
    rrf_k: int
    dense_weight: float
    lexical_weight: float
    k1: float
    b: float
    title_weight: float
    ts_rank_cover_density: bool
    ts_rank_normalization: int
    ef_search: int
    feedback: str
    feedback_docs: int
    feedback_weight: float


@dataclass(frozen=True)
class Row:
    """One ranked document from ``medpg.hybrid_search``, with each list's evidence."""

    document_id: int
    rank: int
    fused_score: float | None
    dense_rank: int | None
    dense_score: float | None
    lexical_rank: int | None
    lexical_score: float | None
    chunk_id: int | None
    char_start: int | None
    char_end: int | None
    matched_terms: tuple[str, ...]


_HYBRID = """
SELECT document_id, rank, fused_score, dense_rank, dense_score, lexical_rank, lexical_score,
       chunk_id, char_start, char_end, matched_terms
FROM medpg.hybrid_search(
    query_text => %(query_text)s, query_embedding => %(query_embedding)s, k => %(k)s, mode => %(mode)s,
    candidates => %(candidates)s, lexical => %(lexical)s, fusion => %(fusion)s, rrf_k => %(rrf_k)s,
    dense_weight => %(dense_weight)s, lexical_weight => %(lexical_weight)s, k1 => %(k1)s, b => %(b)s,
    title_weight => %(title_weight)s, ts_rank_cover_density => %(ts_rank_cover_density)s,
    ts_rank_normalization => %(ts_rank_normalization)s, ef_search => %(ef_search)s,
    sources => %(sources)s, metadata_contains => %(metadata_contains)s, date_from => %(date_from)s,
    date_to => %(date_to)s, patient_ids => %(patient_ids)s, feedback => %(feedback)s,
    feedback_docs => %(feedback_docs)s, feedback_weight => %(feedback_weight)s)
"""
_QUERY_LEXEMES = "SELECT medpg.query_lexemes(%s)"
_DOCUMENTS = """
SELECT id, source, external_id, title, metadata, patient_id, document_date
FROM medpg.documents WHERE id = ANY(%s)
"""
_CHUNK_TEXTS = "SELECT id, text FROM medpg.chunks WHERE id = ANY(%s)"
_EMBEDDING_SPACE_MODEL = "SELECT model FROM medpg.embedding_space"
# Chunks without a current vector: the predicate of medpg.chunk_vector_outdated written out, so
# the partial index chunks_pending_idx (exactly these chunks) answers it without reading the rest.
_CHUNKS_WITHOUT_VECTOR = (
    "SELECT count(*) FROM medpg.chunks c WHERE c.embedded_hash IS DISTINCT FROM c.content_hash"
)
_CHUNK_COUNT = "SELECT count(*) FROM medpg.chunks"
_ANY_DOCUMENT_MATCHES = """
SELECT EXISTS (
    SELECT 1 FROM medpg.documents d
    WHERE medpg.document_matches(d, %(sources)s::text[], %(metadata_contains)s::jsonb,
                                 %(date_from)s::timestamptz, %(date_to)s::timestamptz,
                                 %(patient_ids)s::text[]))
"""
_SOURCES = "SELECT DISTINCT source FROM medpg.documents ORDER BY source LIMIT %s"


def filter_params(filters: Filters) -> dict[str, Any]:
    """The filter arguments of ``medpg.hybrid_search`` (None: no condition)."""
    return {
        "sources": list(filters.sources) if filters.sources is not None else None,
        "metadata_contains": Jsonb(filters.metadata, dumps=lambda o: orjson.dumps(o).decode())
        if filters.metadata is not None
        else None,
        "date_from": filters.date_from,
        "date_to": filters.date_to,
        "patient_ids": list(filters.patient_ids) if filters.patient_ids is not None else None,
    }


def hybrid_search(
    conn: psycopg.Connection[Any],
    query_text: str,
    embedding: np.ndarray | None,
    params: SearchParams,
    filters: Filters,
    *,
    log_text: bool = False,
) -> list[Row]:
    """One call of ``medpg.hybrid_search``; rows best first."""
    args: dict[str, Any] = {
        "query_text": query_text,
        "query_embedding": None if embedding is None else np.asarray(embedding, dtype=np.float32),
        **asdict(params),
        **filter_params(filters),
    }
    with search_errors(log_text):
        rows = conn.execute(_HYBRID, args).fetchall()
    return [Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], tuple(r[10] or ())) for r in rows]


@contextmanager
def search_errors(log_text: bool) -> Iterator[None]:
    """PostgreSQL errors of a search statement as MedpgErrors with messages safe to show.

    22023 from medpg's own argument checks is an InputError with their message (it names the
    argument, never a text value); other data errors are InputErrors too. A server message can
    quote the values it choked on, so it is shown only when MEDPG_LOG_TEXT allows text.
    """
    try:
        yield
    except psycopg.errors.InvalidParameterValue as exc:
        raise InputError(error_message(exc, log_text)) from None
    except psycopg.errors.DataError as exc:
        raise InputError(f"invalid search input: {error_message(exc, log_text)}") from None
    except psycopg.errors.FeatureNotSupported as exc:
        # A lexical backend the server lacks (medpg.textsearch_search): its message and hint say
        # which setting chose it and what to install.
        hint = getattr(exc.diag, "message_hint", None)
        message = error_message(exc, log_text)
        if message.startswith("medpg.") and hint:
            raise BackendUnavailableError(f"{message}. To fix: {hint}") from None
        raise DatabaseError(f"search failed: {message}") from None
    except psycopg.errors.UndefinedFunction as exc:
        raise DatabaseError(
            f"the search functions are missing ({error_message(exc, log_text)}): run `medpg db upgrade`"
        ) from None
    except psycopg.Error as exc:
        raise DatabaseError(f"search failed: {error_message(exc, log_text)}") from None


def error_message(exc: psycopg.Error, log_text: bool) -> str:
    """The server's one-line message, or only its SQLSTATE when the message may hold text.

    Messages of medpg's own checks (``medpg.…``) and of errors that carry no data (connection
    loss, missing functions: classes 08, 42883, 57) are always shown.
    """
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    message = primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    sqlstate = getattr(exc, "sqlstate", None) or (
        getattr(diag, "sqlstate", None) if diag is not None else None
    )
    if message.startswith("medpg.") or (sqlstate or "").startswith(("08", "42883", "57")):
        return message
    if log_text:
        return shown(message, log_text=True, limit=200)
    return f"{type(exc).__name__} (SQLSTATE {sqlstate or 'unknown'}; {shown(message, log_text=False)})"


def query_lexemes(
    conn: psycopg.Connection[Any], query_text: str, *, log_text: bool = False
) -> tuple[str, ...]:
    """The lexemes PostgreSQL makes of the query (``medpg.query_lexemes``), as the results show them."""
    with search_errors(log_text):
        row = conn.execute(_QUERY_LEXEMES, (query_text,)).fetchone()
    return tuple(row[0]) if row and row[0] else ()


@dataclass(frozen=True)
class DocumentInfo:
    """What a result displays about its document."""

    source: str
    external_id: str
    title: str
    metadata: dict[str, Any]
    patient_id: str | None
    document_date: Any


def documents(
    conn: psycopg.Connection[Any], ids: Sequence[int], *, log_text: bool = False
) -> dict[int, DocumentInfo]:
    """Display fields of the given documents; a deleted one is simply absent."""
    with _reading_results(log_text):
        rows = conn.execute(_DOCUMENTS, (list(ids),)).fetchall()
    return {r[0]: DocumentInfo(r[1], r[2], r[3], r[4] or {}, r[5], r[6]) for r in rows}


def chunk_texts(
    conn: psycopg.Connection[Any], chunk_ids: Sequence[int], *, log_text: bool = False
) -> dict[int, str]:
    """Passage text of the given chunks (the results' evidence)."""
    with _reading_results(log_text):
        rows = conn.execute(_CHUNK_TEXTS, (list(chunk_ids),)).fetchall()
    return {r[0]: r[1] for r in rows}


@contextmanager
def _reading_results(log_text: bool) -> Iterator[None]:
    """A failure reading stored rows (e.g. a date psycopg cannot represent) is a DatabaseError."""
    try:
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"reading the results failed: {error_message(exc, log_text)}") from None


def embedding_space_model(conn: psycopg.Connection[Any]) -> str | None:
    """``medpg.embedding_space.model``: the model whose vectors dense search reads (None: none yet)."""
    row = conn.execute(_EMBEDDING_SPACE_MODEL).fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class Coverage:
    """How many chunks dense retrieval can read (a current vector) out of all chunks."""

    embedded: int
    total: int

    @property
    def complete(self) -> bool:
        return self.embedded >= self.total


def dense_coverage(conn: psycopg.Connection[Any]) -> Coverage:
    """Chunks with a current vector vs all chunks; the full count runs only when some lack one."""
    row = conn.execute(_CHUNKS_WITHOUT_VECTOR).fetchone()
    missing = int(row[0]) if row else 0
    if missing == 0:
        return Coverage(0, 0)
    total_row = conn.execute(_CHUNK_COUNT).fetchone()
    total = int(total_row[0]) if total_row else 0
    return Coverage(max(total - missing, 0), total)


def any_document_matches(conn: psycopg.Connection[Any], filters: Filters) -> bool:
    """Whether at least one document passes ``filters`` (``medpg.document_matches``), by EXISTS."""
    with search_errors(False):
        row = conn.execute(_ANY_DOCUMENT_MATCHES, filter_params(filters)).fetchone()
    return bool(row and row[0])


def stored_sources(conn: psycopg.Connection[Any], limit: int = 10) -> list[str]:
    """Up to ``limit`` source names in the database, sorted (to say which ones exist)."""
    return [r[0] for r in conn.execute(_SOURCES, (limit + 1,)).fetchall()]


__all__ = [
    "Coverage",
    "DocumentInfo",
    "Row",
    "SearchParams",
    "any_document_matches",
    "chunk_texts",
    "dense_coverage",
    "documents",
    "embedding_space_model",
    "error_message",
    "filter_params",
    "hybrid_search",
    "query_lexemes",
    "search_errors",
    "stored_sources",
]
