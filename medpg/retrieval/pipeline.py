"""``search()``: encode the query, rank in PostgreSQL, rerank the top K, explain every result.

Retrieval and fusion run in one call of ``medpg.hybrid_search``; Python adds what SQL cannot do:
the query embedding and the cross-encoder. ``search()`` reads as its steps: check the call, decide
whether dense retrieval can run and whether to rerank, encode, call SQL, rerank, build the response.

The response says when its results are less than they seem (``SearchResponse.warnings``): an
empty query, dense retrieval over part of the corpus, a filter no document matches, a skipped
rerank. Warnings carry counts and setting names, never query or document text.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from medpg import audit as audit_log
from medpg.access import Scope
from medpg.audit import AuditContext
from medpg.config import Settings, get_settings
from medpg.db.engine import Database
from medpg.errors import BackendUnavailableError, ConfigError, InputError, ModelNotAvailableError
from medpg.retrieval import arguments, sql
from medpg.retrieval.arguments import MAX_CANDIDATES, MAX_K
from medpg.retrieval.query import prepare_query
from medpg.retrieval.rerank import RerankItem
from medpg.retrieval.rerank import rerank as rerank_items
from medpg.retrieval.types import Evidence, Explanation, Filters, SearchResponse, SearchResult
from medpg.vocabulary import (
    FUSION_METHODS,
    LEXICAL_SCORERS,
    SEARCH_MODES,
    FusionMethod,
    LexicalScorer,
    SearchMode,
)

if TYPE_CHECKING:
    from medpg.encoders.base import CrossEncoder

log = logging.getLogger(__name__)

_databases: dict[tuple[str | None, str, str], Database] = {}
_checked: weakref.WeakSet[Database] = weakref.WeakSet()
_lock = threading.Lock()


def default_database(settings: Settings) -> Database:
    """One Database (and pool) per configured server, reused across calls."""
    key = (settings.database_url, str(settings.data_dir), settings.embedded_database)
    with _lock:
        db = _databases.get(key)
        if db is None:
            db = _databases[key] = Database(settings)
        return db


def _check_schema_once(db: Database) -> None:
    if db in _checked:
        return
    from medpg import schema

    schema.check(db)
    _checked.add(db)


# --------------------------------------------------------------------------------------------------
# step 1: the call, checked and completed from settings


@dataclass(frozen=True)
class _Request:
    """One search call after validation: every choice made, the query text safe for PostgreSQL."""

    text: str
    k: int
    mode: SearchMode
    lexical: LexicalScorer
    fusion: FusionMethod
    filters: Filters
    rerank: bool | None
    candidates: int | None
    embedding: np.ndarray | None


def _choice(value: object, default: str, allowed: tuple[str, ...], name: str) -> str:
    chosen = default if value is None else value
    if not isinstance(chosen, str) or chosen not in allowed:
        got = ascii(chosen)[:40] if isinstance(chosen, str) else f"a {type(chosen).__name__}"
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {got}")
    return chosen


def _request(
    settings: Settings,
    query: object,
    k: object,
    mode: object,
    lexical: object,
    fusion: object,
    filters: Filters | Mapping[str, Any] | None,
    rerank: object,
    candidates: object,
    query_embedding: object,
) -> _Request:
    """Validate every argument (InputError names the bad one) and fill the defaults from settings.

    ``candidates=None`` means MEDPG_CANDIDATES; any other value must be 1..MAX_CANDIDATES.
    """
    k_ = arguments.integer(k, "k", 1, MAX_K)
    mode_ = cast(SearchMode, _choice(mode, settings.search_mode, SEARCH_MODES, "mode"))
    lexical_ = cast(LexicalScorer, _choice(lexical, settings.lexical_scorer, LEXICAL_SCORERS, "lexical"))
    fusion_ = cast(FusionMethod, _choice(fusion, settings.fusion, FUSION_METHODS, "fusion"))
    if rerank is not None and not isinstance(rerank, bool):
        raise InputError(f"rerank must be True, False or None, got {type(rerank).__name__}")
    candidates_ = (
        None if candidates is None else arguments.integer(candidates, "candidates", 1, MAX_CANDIDATES)
    )
    embedding = arguments.embedding(query_embedding)
    filt = Filters.coerce(filters)
    text = prepare_query(query, settings.max_query_chars)
    return _Request(text, k_, mode_, lexical_, fusion_, filt, rerank, candidates_, embedding)


def search_params(
    settings: Settings,
    *,
    k: int,
    mode: str,
    lexical: str,
    fusion: str,
    candidates: int | None = None,
    weights: tuple[float, float] | None = None,
) -> sql.SearchParams:
    """The SQL call's parameters from settings and per-call choices.

    ``weights``: (dense, lexical) fusion weights instead of the settings' (the active query
    adaptation's learned ones, ``medpg.learning.active.fusion_weights``).
    """
    dense_weight, lexical_weight = weights or (settings.dense_weight, settings.lexical_weight)
    return sql.SearchParams(
        k=k,
        mode=mode,
        candidates=settings.candidates if candidates is None else candidates,
        lexical=lexical,
        fusion=fusion,
        rrf_k=settings.rrf_k,
        dense_weight=dense_weight,
        lexical_weight=lexical_weight,
        k1=settings.bm25_k1,
        b=settings.bm25_b,
        title_weight=settings.bm25_title_weight,
        ts_rank_cover_density=settings.ts_rank_cover_density,
        ts_rank_normalization=settings.ts_rank_normalization,
        ef_search=settings.hnsw_ef_search,
        feedback=settings.feedback,
        feedback_docs=settings.feedback_docs,
        feedback_weight=settings.feedback_weight,
    )


# --------------------------------------------------------------------------------------------------
# step 2: can dense retrieval run? (the stored vectors must come from the configured model)


def dense_status(db: Database, settings: Settings) -> str | None:
    """None when dense search can run; otherwise why not (the embeddings' model is not the configured one)."""
    from medpg.embedding import article_model_identity

    with db.connect() as conn:
        space_model = sql.embedding_space_model(conn)
    configured = article_model_identity(settings)
    if space_model is None:
        return (
            "no document has an embedding yet (medpg.embedding_space.model is empty): dense retrieval "
            "was skipped; run `medpg embed` or start a worker"
        )
    if space_model != configured:
        return (
            f"the stored embeddings are from {space_model!r} but the configured article model is "
            f"{configured!r}: their vectors are not comparable with this query encoder, so dense retrieval "
            "was skipped (finish the model switch with `medpg embed`, or configure the model in use)"
        )
    return None


def _runnable_mode(
    db: Database, settings: Settings, mode: SearchMode, query_embedding: np.ndarray | None
) -> tuple[SearchMode | None, str | None]:
    """The mode that can run, and a warning when it is not the one asked for.

    When the stored vectors are not comparable with the query encoder, hybrid falls back to
    lexical and dense to nothing (None). A caller's own query embedding is trusted as it is
    (benchmarks, evaluation).
    """
    if mode == "lexical" or query_embedding is not None:
        return mode, None
    problem = dense_status(db, settings)
    if problem is None:
        return mode, None
    return ("lexical" if mode == "hybrid" else None), problem


# --------------------------------------------------------------------------------------------------
# step 3: models (loaded lazily: a lexical search without a reranker never imports torch)


@dataclass(frozen=True)
class _RerankPlan:
    """Whether to rerank (the cross-encoder is configured and, as far as the disk tells, there)."""

    model: str | None
    warning: str | None = None


def _unavailable(model: str, detail: str) -> str:
    why = f" ({detail})" if detail else ""
    return f"the cross-encoder {model!r} is not available on this machine{why}"


def _unavailable_warning(model: str, profile: str, detail: str) -> str:
    from medpg.encoders.hub import how_to_get

    return (
        f"{_unavailable(model, detail)}, so the results are not reranked: {how_to_get('cross', profile)}; "
        "MEDPG_CROSS_ENCODER_MODEL=none turns reranking off"
    )


def _rerank_plan(settings: Settings, rerank: bool | None) -> _RerankPlan:
    """Decide before retrieval whether to rerank, without loading the model (or torch).

    ``rerank=None`` (automatic) skips a configured cross-encoder that is not on this machine,
    with a warning; ``rerank=True`` makes that, or no cross-encoder at all, an error.
    """
    from medpg.encoders.hub import how_to_get, locate_model
    from medpg.encoders.profiles import resolve_profile

    profile = resolve_profile(settings)
    model = profile.cross_encoder_model if rerank is not False and settings.rerank_top_k > 0 else None
    if model is None:
        if rerank is True:
            raise ConfigError(
                "reranking was requested but no cross-encoder is configured (MEDPG_CROSS_ENCODER_MODEL, "
                "MEDPG_RERANK_TOP_K)"
            )
        return _RerankPlan(None)
    location = locate_model(model)
    if location.available:
        return _RerankPlan(model)
    if rerank is True:
        raise ModelNotAvailableError(
            f"reranking was requested but {_unavailable(model, location.detail)}: "
            f"{how_to_get('cross', profile.name)}"
        )
    return _RerankPlan(None, _unavailable_warning(model, profile.name, location.detail))


def _load_cross_encoder(
    settings: Settings, plan: _RerankPlan, rerank: bool | None, notify: Callable[[str], None] | None
) -> tuple[CrossEncoder | None, str | None]:
    """The planned cross-encoder, loaded; with ``rerank=None`` a model that fails to load is a warning."""
    if plan.model is None:
        return None, None
    from medpg.encoders import load_cross_encoder

    if notify is not None:
        notify("loading the cross-encoder...")
    try:
        return load_cross_encoder(settings), None
    except ModelNotAvailableError:
        if rerank is True:
            raise
        from medpg.encoders.profiles import resolve_profile

        return None, _unavailable_warning(
            plan.model, resolve_profile(settings).name, "it could not be loaded"
        )


def _encode_query(
    settings: Settings,
    text: str,
    run_mode: SearchMode | None,
    timings: dict[str, float],
    notify: Callable[[str], None] | None,
) -> np.ndarray | None:
    """The query embedding when the mode that runs needs one."""
    if run_mode not in ("hybrid", "dense"):
        return None
    from medpg.encoders import load_query_encoder

    t0 = time.perf_counter()
    if notify is not None:
        notify("loading the query encoder...")
    embedding: np.ndarray = load_query_encoder(settings).encode_queries([text])[0]
    timings["encode"] = (time.perf_counter() - t0) * 1000
    return embedding


def _adapt(
    conn: Any,
    db: Database,
    settings: Settings,
    run_mode: SearchMode | None,
    embedding: np.ndarray | None,
    *,
    encoded_here: bool,
    timings: dict[str, float],
) -> tuple[np.ndarray | None, tuple[float, float]]:
    """The active query adaptation (``medpg learn``) applied to a vector this search encoded, and
    the fusion weights to use: the user's when set, else the adaptation's learned ones.

    Looked up in the search's own transaction, under its scope (``medpg.learning.active``). A
    caller's own ``query_embedding`` is used as given; only its fusion weights follow the adaptation.
    """
    if run_mode not in ("hybrid", "dense"):
        return embedding, (settings.dense_weight, settings.lexical_weight)
    from medpg.learning.active import fusion_weights, lookup

    t0 = time.perf_counter()
    query_model = None
    if encoded_here:
        from medpg.encoders import load_query_encoder

        query_model = load_query_encoder(settings).model_name
    adaptation = lookup(conn, db, query_model)
    if adaptation is not None and encoded_here and embedding is not None:
        embedding = adaptation.apply(embedding)
    timings["adapt"] = (time.perf_counter() - t0) * 1000
    return embedding, fusion_weights(settings, adaptation)


# --------------------------------------------------------------------------------------------------
# step 4: PostgreSQL


@dataclass(frozen=True)
class _Retrieved:
    """What one connection brought back: the query's lexemes, the ranked rows, what they display."""

    terms: tuple[str, ...]
    rows: list[sql.Row]
    docs: dict[int, sql.DocumentInfo]
    chunks: dict[int, str]
    warnings: tuple[str, ...] = ()


def _retrieve(
    conn: Any,
    request: _Request,
    run_mode: SearchMode | None,
    embedding: np.ndarray | None,
    params: sql.SearchParams,
    timings: dict[str, float],
    *,
    log_text: bool,
) -> _Retrieved:
    """Rank in ``medpg.hybrid_search`` and fetch titles and evidence passages, read-only.

    On the same connection: how much of the corpus dense retrieval read, and, only when nothing
    was found, whether the filters match any document at all (each a cheap count or EXISTS).
    Under a scope every statement sees only the scope's rows (row-level security).
    """
    warnings: list[str] = []
    terms = sql.query_lexemes(conn, request.text, log_text=log_text)
    rows: list[sql.Row] = []
    if run_mode is not None:
        t0 = time.perf_counter()
        vector = embedding if run_mode != "lexical" else None
        rows = sql.hybrid_search(conn, request.text, vector, params, request.filters, log_text=log_text)
        timings["sql"] = (time.perf_counter() - t0) * 1000
    if run_mode in ("hybrid", "dense"):
        warnings.extend(_coverage_warning(sql.dense_coverage(conn)))
    if not rows and request.filters.active:
        warnings.extend(_filter_warnings(conn, request.filters))
    docs = sql.documents(conn, [r.document_id for r in rows], log_text=log_text)
    chunks = sql.chunk_texts(conn, [r.chunk_id for r in rows if r.chunk_id is not None], log_text=log_text)
    return _Retrieved(terms, rows, docs, chunks, tuple(warnings))


def _percent(part: int, whole: int) -> str:
    """A share as a whole percentage that never reads 0% or 100% for a part strictly between."""
    share = 100 * part / whole if whole else 0.0
    if 0 < share < 1:
        return "<1%"
    if 99 < share < 100:
        return ">99%"
    return f"{share:.0f}%"


def _coverage_warning(coverage: sql.Coverage) -> list[str]:
    if coverage.complete:
        return []
    return [
        f"dense retrieval covered {coverage.embedded:,} of {coverage.total:,} chunks "
        f"({_percent(coverage.embedded, coverage.total)}); the rest have no current vector yet: "
        "run `medpg embed` (or start a worker)"
    ]


# Filters checked one at a time when together they match nothing: (label, Filters fields).
_FILTER_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sources", ("sources",)),
    ("metadata", ("metadata",)),
    ("date_from/date_to", ("date_from", "date_to")),
    ("patient_ids", ("patient_ids",)),
)


def _filter_warnings(conn: Any, filters: Filters) -> list[str]:
    """Say which filters match no document at all, or that they match none together.

    Filter values are never quoted (patient ids are health information); stored source names
    are listed, since a mistyped source is the usual cause.
    """
    if sql.any_document_matches(conn, filters):
        return []
    warnings: list[str] = []
    for label, names in _FILTER_GROUPS:
        given = {name: getattr(filters, name) for name in names if getattr(filters, name) is not None}
        if not given or sql.any_document_matches(conn, Filters(**given)):
            continue
        if label == "sources":
            known = sql.stored_sources(conn, limit=10)
            listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            warnings.append(
                f"the sources filter matches no document; stored sources: {listed or 'none (the database is empty)'}"
            )
        else:
            warnings.append(f"the {label} filter matches no document")
    if not warnings:
        warnings.append("no document matches all the filters together (each matches some documents alone)")
    return warnings


def _evidence_text(found: _Retrieved, row: sql.Row) -> str:
    return found.chunks.get(row.chunk_id, "") if row.chunk_id is not None else ""


# --------------------------------------------------------------------------------------------------
# step 5: rerank the top K


@dataclass(frozen=True)
class _Ranking:
    """Final order of document ids; cross-encoder and blended scores of the reranked ones."""

    order: list[int]
    rerank_scores: dict[int, float]
    final_scores: dict[int, float]


def _rerank(
    cross: CrossEncoder | None, text: str, found: _Retrieved, settings: Settings, timings: dict[str, float]
) -> _Ranking:
    """Rerank the first MEDPG_RERANK_TOP_K rows; the rest keep their first-stage order after them."""
    first_stage = [r.document_id for r in found.rows]
    if cross is None or not found.rows:
        return _Ranking(first_stage, {}, {})
    top_k = settings.rerank_top_k
    items = [
        RerankItem(
            r.document_id,
            found.docs[r.document_id].title if r.document_id in found.docs else "",
            _evidence_text(found, r),
            r.dense_score,
            r.lexical_score,
        )
        for r in found.rows[:top_k]
    ]
    t0 = time.perf_counter()
    rerank_scores, final_scores = rerank_items(
        cross,
        text,
        items,
        rerank_weight=settings.rerank_weight,
        dense_weight=settings.rerank_dense_weight,
        lexical_weight=settings.rerank_lexical_weight,
    )
    timings["rerank"] = (time.perf_counter() - t0) * 1000
    reranked = sorted(final_scores, key=lambda d: (-final_scores[d], d))
    return _Ranking(reranked + first_stage[top_k:], rerank_scores, final_scores)


# --------------------------------------------------------------------------------------------------
# step 6: the response


def _results(found: _Retrieved, ranking: _Ranking, k: int) -> list[SearchResult]:
    """The top ``k`` as SearchResults, each with its evidence passage and explanation."""
    by_id = {r.document_id: r for r in found.rows}
    results: list[SearchResult] = []
    for position, doc_id in enumerate(ranking.order[:k], start=1):
        row = by_id[doc_id]
        info = found.docs.get(doc_id)
        if info is None:  # deleted between the search and the lookup
            continue
        score = ranking.final_scores.get(doc_id, row.fused_score if row.fused_score is not None else 0.0)
        results.append(
            SearchResult(
                rank=position,
                score=float(score),
                document_id=doc_id,
                source=info.source,
                external_id=info.external_id,
                title=info.title,
                evidence=Evidence(row.chunk_id, row.char_start, row.char_end, _evidence_text(found, row)),
                explanation=Explanation(
                    dense_rank=row.dense_rank,
                    dense_score=row.dense_score,
                    lexical_rank=row.lexical_rank,
                    lexical_score=row.lexical_score,
                    matched_terms=row.matched_terms,
                    fused_score=row.fused_score,
                    first_stage_rank=row.rank,
                    rerank_score=ranking.rerank_scores.get(doc_id),
                ),
                metadata=info.metadata,
                patient_id=info.patient_id,
                document_date=info.document_date,
            )
        )
    return results


# --------------------------------------------------------------------------------------------------
# the pipeline


def search(
    query: str,
    k: int = 10,
    mode: SearchMode | str | None = None,
    lexical: LexicalScorer | str | None = None,
    fusion: FusionMethod | str | None = None,
    rerank: bool | None = None,
    filters: Filters | Mapping[str, Any] | None = None,
    *,
    db: Database | None = None,
    settings: Settings | None = None,
    candidates: int | None = None,
    query_embedding: np.ndarray | None = None,
    notify: Callable[[str], None] | None = None,
    scope: Scope | None = None,
    audit: AuditContext | None = None,
) -> SearchResponse:
    """Search documents; results best first, each with an explanation and its evidence passage.

    ``mode``: "hybrid" (dense + lexical, fused), "dense" or "lexical"; ``lexical``: "bm25",
    "ts_rank" or "pg_textsearch" (where the server has that extension); ``fusion``: "adaptive",
    "weighted" or "rrf" (defaults from settings). ``rerank``: None reranks
    the top MEDPG_RERANK_TOP_K with the cross-encoder when one is configured, True requires one,
    False turns it off. ``filters``: a Filters or a dict with sources, metadata (jsonb containment),
    date_from / date_to (half-open) and patient_ids. ``candidates``: per retriever, 1 to
    MAX_CANDIDATES (None: MEDPG_CANDIDATES). ``query_embedding`` skips encoding (benchmarks).
    ``notify`` is called with a short line before a model is loaded (the CLI prints it).
    ``scope``: search only what the scope can see, enforced by PostgreSQL's row-level security
    (``medpg.access``); ``audit``: append an audit row of the results in the same transaction.
    Every argument is checked first: a bad one is an InputError naming it. An empty or
    whitespace-only query returns no results and a warning, without touching the database.
    """
    settings = settings or get_settings()
    db = db or default_database(settings)
    started = time.perf_counter()
    request = _request(
        settings, query, k, mode, lexical, fusion, filters, rerank, candidates, query_embedding
    )
    if not request.text.strip():
        return _empty_query_response(request, started)
    _check_schema_once(db)
    timings: dict[str, float] = {}

    run_mode, warning = _runnable_mode(db, settings, request.mode, request.embedding)
    warnings = [warning] if warning is not None else []
    plan = _rerank_plan(settings, request.rerank)
    if plan.warning is not None:
        warnings.append(plan.warning)
    embedding = request.embedding
    encoded_here = embedding is None
    if embedding is None:
        embedding = _encode_query(settings, request.text, run_mode, timings, notify)
    with db.connect() as conn:
        if scope is not None:
            scope.apply(conn)
        embedding, weights = _adapt(
            conn, db, settings, run_mode, embedding, encoded_here=encoded_here, timings=timings
        )
        params = search_params(
            settings,
            # the reranker reads the first MEDPG_RERANK_TOP_K rows even when fewer are returned
            k=max(request.k, settings.rerank_top_k) if plan.model is not None else request.k,
            mode=run_mode or "lexical",  # unused when nothing runs; the SQL still wants a valid mode
            lexical=request.lexical,
            fusion=request.fusion,
            candidates=request.candidates,
            weights=weights,
        )
        try:
            found = _retrieve(conn, request, run_mode, embedding, params, timings, log_text=settings.log_text)
        except BackendUnavailableError as exc:
            if lexical is None:  # MEDPG_LEXICAL_SCORER chose it: the server's configuration
                raise
            raise InputError(f"lexical {request.lexical!r} is not available on this server: {exc}") from None
        warnings.extend(found.warnings)
        cross = None
        if found.rows:  # nothing to rerank: the model is not loaded
            cross, load_warning = _load_cross_encoder(settings, plan, request.rerank, notify)
            if load_warning is not None:
                warnings.append(load_warning)
        ranking = _rerank(cross, request.text, found, settings, timings)
        results = _results(found, ranking, request.k)
        if audit is not None:
            audit_log.record(conn, audit, query=request.text, document_ids=[r.document_id for r in results])
            conn.commit()
        else:
            conn.rollback()

    timings["total"] = (time.perf_counter() - started) * 1000
    log.info(
        "search: query=%s mode=%s results=%d sql=%.1fms",
        arguments.shown(request.text, log_text=settings.log_text),
        run_mode or "none",
        len(results),
        timings.get("sql", 0.0),
    )
    return SearchResponse(
        results=results,
        mode=request.mode,
        lexical=request.lexical,
        fusion=request.fusion,
        reranked=bool(ranking.rerank_scores),
        query_terms=found.terms,
        warnings=tuple(warnings),
        timings_ms=timings,
    )


EMPTY_QUERY_WARNING = "the query is empty (or only whitespace): there is nothing to search for"


def _empty_query_response(request: _Request, started: float) -> SearchResponse:
    """No results for an empty query: any ranking of it (dense neighbours of "") would be arbitrary."""
    return SearchResponse(
        results=[],
        mode=request.mode,
        lexical=request.lexical,
        fusion=request.fusion,
        reranked=False,
        query_terms=(),
        warnings=(EMPTY_QUERY_WARNING,),
        timings_ms={"total": (time.perf_counter() - started) * 1000},
    )


__all__ = [
    "EMPTY_QUERY_WARNING",
    "MAX_CANDIDATES",
    "MAX_K",
    "default_database",
    "dense_status",
    "search",
    "search_params",
]
