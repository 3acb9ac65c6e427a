"""``search()``: encode the query, rank in PostgreSQL, rerank the top K, explain every result.

Retrieval and fusion run in one call of ``medpg.hybrid_search`` (migration 0005); Python adds
what SQL cannot do: the query embedding and the cross-encoder.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from medpg.config import Settings, get_settings
from medpg.db.engine import Database
from medpg.errors import ConfigError, InputError
from medpg.search import sql
from medpg.search.query import prepare_query
from medpg.search.rerank import RerankItem
from medpg.search.rerank import rerank as rerank_items
from medpg.search.types import (
    Evidence,
    Explanation,
    Filters,
    Fusion,
    Lexical,
    Mode,
    SearchResponse,
    SearchResult,
)

log = logging.getLogger(__name__)

MAX_K = 1000
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
    from medpg.db.schema import check_schema

    check_schema(db)
    _checked.add(db)


def search_params(
    settings: Settings,
    *,
    k: int,
    mode: str,
    lexical: str,
    fusion: str,
    candidates: int | None = None,
) -> sql.SearchParams:
    """The SQL call's parameters from settings and per-call choices."""
    return sql.SearchParams(
        k=k,
        mode=mode,
        candidates=candidates or settings.candidates,
        lexical=lexical,
        fusion=fusion,
        rrf_k=settings.rrf_k,
        dense_weight=settings.dense_weight,
        lexical_weight=settings.lexical_weight,
        k1=settings.bm25_k1,
        b=settings.bm25_b,
        title_weight=settings.bm25_title_weight,
        ts_rank_cover_density=settings.ts_rank_cover_density,
        ts_rank_normalization=settings.ts_rank_normalization,
        ef_search=settings.hnsw_ef_search,
    )


def _choice(value: str | None, default: str, allowed: tuple[str, ...], name: str) -> str:
    chosen = default if value is None else value
    if chosen not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {chosen!r}")
    return chosen


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


def search(
    query: str,
    k: int = 10,
    mode: Mode | str | None = None,
    lexical: Lexical | str | None = None,
    fusion: Fusion | str | None = None,
    rerank: bool | None = None,
    filters: Filters | Mapping[str, Any] | None = None,
    *,
    db: Database | None = None,
    settings: Settings | None = None,
    candidates: int | None = None,
    query_embedding: np.ndarray | None = None,
) -> SearchResponse:
    """Search documents; results best first, each with an explanation and its evidence passage.

    ``mode``: "hybrid" (dense + lexical, fused), "dense" or "lexical"; ``lexical``: "bm25" or
    "ts_rank"; ``fusion``: "weighted" or "rrf" (defaults from settings). ``rerank``: None reranks
    the top MEDPG_RERANK_TOP_K with the cross-encoder when one is configured, True requires one,
    False turns it off. ``filters``: a Filters or a dict with sources, metadata (jsonb containment),
    date_from / date_to (half-open) and patient_ids. ``query_embedding`` skips encoding (benchmarks).
    """
    settings = settings or get_settings()
    db = db or default_database(settings)
    started = time.perf_counter()
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    mode_ = _choice(mode, settings.search_mode, ("hybrid", "dense", "lexical"), "mode")
    lexical_ = _choice(lexical, settings.lexical_scorer, ("bm25", "ts_rank"), "lexical")
    fusion_ = _choice(fusion, settings.fusion, ("weighted", "rrf"), "fusion")
    filt = Filters.coerce(filters)
    text = prepare_query(query, settings.max_query_chars)
    _check_schema_once(db)
    warnings: list[str] = []
    timings: dict[str, float] = {}

    run_mode = mode_
    if mode_ != "lexical" and query_embedding is None:
        problem = dense_status(db, settings)
        if problem is not None:
            warnings.append(problem)
            run_mode = "lexical" if mode_ == "hybrid" else "none"

    cross = None
    if rerank is not False and settings.rerank_top_k > 0:
        from medpg.encoders import load_cross_encoder

        cross = load_cross_encoder(settings)
    if rerank is True and cross is None:
        raise ConfigError(
            "reranking was requested but no cross-encoder is configured (MEDPG_CROSS_ENCODER_MODEL, "
            "MEDPG_RERANK_TOP_K)"
        )

    embedding = query_embedding
    if run_mode in ("hybrid", "dense") and embedding is None:
        from medpg.encoders import load_query_encoder

        t0 = time.perf_counter()
        embedding = load_query_encoder(settings).encode_queries([text])[0]
        timings["encode"] = (time.perf_counter() - t0) * 1000

    fetch_k = max(k, settings.rerank_top_k) if cross is not None else k
    params = search_params(
        settings,
        k=fetch_k,
        mode=run_mode if run_mode != "none" else "lexical",
        lexical=lexical_,
        fusion=fusion_,
        candidates=candidates,
    )
    with db.connect() as conn:
        terms = sql.query_lexemes(conn, text)
        rows: list[sql.Row] = []
        if run_mode != "none":
            t0 = time.perf_counter()
            rows = sql.hybrid_search(conn, text, embedding if run_mode != "lexical" else None, params, filt)
            timings["sql"] = (time.perf_counter() - t0) * 1000
        docs = sql.documents(conn, [r.document_id for r in rows])
        chunks = sql.chunk_texts(conn, [r.chunk_id for r in rows if r.chunk_id is not None])
        conn.rollback()

    rerank_scores: dict[int, float] = {}
    final_scores: dict[int, float] = {}
    order = [r.document_id for r in rows]
    if cross is not None and rows:
        top = rows[: settings.rerank_top_k]
        items = [
            RerankItem(
                r.document_id,
                docs[r.document_id].title if r.document_id in docs else "",
                chunks.get(r.chunk_id, "") if r.chunk_id is not None else "",
                r.dense_score,
                r.lexical_score,
            )
            for r in top
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
        order = reranked + [r.document_id for r in rows[settings.rerank_top_k :]]

    by_id = {r.document_id: r for r in rows}
    results: list[SearchResult] = []
    for position, doc_id in enumerate(order[:k], start=1):
        r = by_id[doc_id]
        info = docs.get(doc_id)
        if info is None:  # deleted between the search and the lookup
            continue
        evidence_text = chunks.get(r.chunk_id, "") if r.chunk_id is not None else ""
        score = final_scores.get(doc_id, r.fused_score if r.fused_score is not None else 0.0)
        results.append(
            SearchResult(
                rank=position,
                score=float(score),
                document_id=doc_id,
                source=info.source,
                external_id=info.external_id,
                title=info.title,
                evidence=Evidence(r.chunk_id, r.char_start, r.char_end, evidence_text),
                explanation=Explanation(
                    dense_rank=r.dense_rank,
                    dense_score=r.dense_score,
                    lexical_rank=r.lexical_rank,
                    lexical_score=r.lexical_score,
                    matched_terms=r.matched_terms,
                    fused_score=r.fused_score,
                    first_stage_rank=r.rank,
                    rerank_score=rerank_scores.get(doc_id),
                ),
                metadata=info.metadata,
                patient_id=info.patient_id,
                document_date=info.document_date,
            )
        )
    timings["total"] = (time.perf_counter() - started) * 1000
    log.info("search: mode=%s results=%d sql=%.1fms", run_mode, len(results), timings.get("sql", 0.0))
    return SearchResponse(
        results=results,
        mode=mode_,  # type: ignore[arg-type]
        lexical=lexical_,  # type: ignore[arg-type]
        fusion=fusion_,  # type: ignore[arg-type]
        reranked=bool(rerank_scores),
        query_terms=terms,
        warnings=tuple(warnings),
        timings_ms=timings,
    )


__all__ = ["default_database", "dense_status", "search", "search_params"]
