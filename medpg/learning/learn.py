"""``medpg learn``: train a query adaptation from judgments, check it on held-out ones, store it.

The steps, each a function below:

1. the query encoder and the stored vectors it must match (the corpus is never re-embedded);
2. query vectors of the training and held-out queries, from the raw query encoder;
3. the document vectors to train against: every chunk of the tenant's corpus when it is small
   enough, else the judged documents and each query's hard negatives from medpg's dense retrieval;
4. training (``medpg.learning.train``), stopping early on held-out dense nDCG@10;
5. fusion weights: the dense/lexical mix with the best held-out hybrid nDCG@10, with the adapted vectors;
6. the guard: the held-out nDCG@10 of the default hybrid search with the new adaptation against
   the one in use now (the tenant's active adaptation, else the one for every tenant, else none),
   on the same queries. It is stored either way; it becomes active only if it does not score
   lower, or with ``force``. Storing and activating are one transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpg.access import DEFAULT_TENANT, Scope
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import InputError, SchemaMismatchError
from medpg.learning import store
from medpg.learning.active import ActiveAdaptation, fusion_weights
from medpg.learning.heldout import HeldOut
from medpg.learning.judgments import Judgments
from medpg.learning.train import DocumentVectors, TrainConfig, TrainingSet, train_adapter
from medpg.retrieval import sql
from medpg.retrieval.pipeline import search_params
from medpg.retrieval.types import Filters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnReport:
    """What one ``medpg learn`` run did: the stored adaptation, the guard's two figures, and why it
    is active or not."""

    adaptation_id: int
    tenant: str | None
    activated: bool
    forced: bool
    heldout_ndcg10: float
    baseline_ndcg10: float
    baseline_id: int | None
    dense_before: float
    dense_after: float
    dense_weight: float
    lexical_weight: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    seconds: float
    trained_on: dict[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return not self.activated and self.heldout_ndcg10 < self.baseline_ndcg10


def learn(
    db: Database,
    settings: Settings,
    *,
    train: Judgments,
    heldout: Judgments,
    trained_on: dict[str, Any],
    tenant: str | None = None,
    filters: Filters | None = None,
    config: TrainConfig | None = None,
    force: bool = False,
    activate: bool = True,
    log_line: Callable[[str], None] = lambda _m: None,
) -> LearnReport:
    """Train, check and store one adaptation for ``tenant`` (None: every tenant); see the module.

    ``filters`` restrict which documents compete in the held-out searches (a BEIR corpus's source).
    ``activate=False`` stores it without activating it (``medpg learn activate ID`` later).
    """
    from medpg import schema
    from medpg.encoders import load_query_encoder

    started = time.perf_counter()
    config = config or TrainConfig()
    if len(train) == 0 or len(heldout) == 0:
        raise InputError(
            f"{len(train)} training and {len(heldout)} held-out queries with a relevant stored document: "
            "learning needs both"
        )
    schema.check(db)
    scope = Scope(tenant if tenant is not None else DEFAULT_TENANT)
    filters = filters or Filters()
    article_model = _space_model(db, settings)
    encoder = load_query_encoder(settings)
    log_line(f"encoding {len(train):,} training and {len(heldout):,} held-out queries")
    train_vectors = encoder.encode_queries([train.queries[q] for q in train.ids])
    held = HeldOut(
        db,
        settings,
        heldout,
        encoder.encode_queries([heldout.queries[q] for q in heldout.ids]),
        scope,
        filters,
    )

    documents, hard = _document_vectors(
        db, settings, scope, article_model, train, train_vectors, config, filters, log_line
    )
    data = _training_set(train, train_vectors, documents, hard)
    if len(data) == 0:
        raise InputError(
            "no training query has a relevant document with a stored vector; run `medpg embed` first"
        )
    log_line(
        f"training on {len(data):,} queries against {len(documents.document_ids):,} documents "
        f"({documents.chunk_count:,} chunk vectors)"
    )
    result = train_adapter(
        data,
        documents,
        lambda adapter: held.ndcg10(
            adapter, mode="dense", weights=(settings.dense_weight, settings.lexical_weight)
        ),
        config,
        log=log_line,
    )
    log_line(f"best epoch {result.best_epoch}; choosing fusion weights on the held-out queries")
    current = _baseline(db, scope, tenant, encoder.model_name)
    prefer = fusion_weights(settings, current)[0]
    weights, candidate, tried = held.best_weights(result.adapter, prefer=prefer)
    baseline = held.ndcg10(current.adapter if current else None, weights=fusion_weights(settings, current))
    activated = activate and (candidate >= baseline or force)
    training = {
        **config.as_dict(),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history) - 1,
        "train_seconds": round(result.seconds, 1),
        "history": [
            {
                "epoch": e.epoch,
                "loss": None if np.isnan(e.loss) else round(e.loss, 5),
                "heldout_dense_ndcg10": round(e.heldout_ndcg10, 5),
            }
            for e in result.history
        ],
        "weights_tried": tried,
        "negatives": "all documents"
        if documents.chunk_count <= config.all_documents_up_to
        else f"in-batch + top {config.hard_negatives} dense",
    }
    with db.connect() as conn:
        adaptation_id = store.insert(
            conn,
            tenant=tenant,
            adapter=result.adapter,
            query_model=encoder.model_name,
            article_model=article_model,
            dense_weight=weights[0],
            lexical_weight=weights[1],
            trained_on=trained_on,
            training=training,
            heldout_ndcg10=candidate,
            baseline_ndcg10=baseline,
            baseline_id=current.id if current else None,
        )
        if activated:
            store.switch_to(conn, adaptation_id, forced=candidate < baseline)
        conn.commit()
    return LearnReport(
        adaptation_id=adaptation_id,
        tenant=tenant,
        activated=activated,
        forced=activated and candidate < baseline,
        heldout_ndcg10=candidate,
        baseline_ndcg10=baseline,
        baseline_id=current.id if current else None,
        dense_before=result.history[0].heldout_ndcg10,
        dense_after=result.heldout_ndcg10,
        dense_weight=weights[0],
        lexical_weight=weights[1],
        best_epoch=result.best_epoch,
        epochs_run=len(result.history) - 1,
        train_seconds=result.seconds,
        seconds=time.perf_counter() - started,
        trained_on=trained_on,
    )


def _space_model(db: Database, settings: Settings) -> str:
    """The model of the stored vectors, which must be the configured article model."""
    from medpg.retrieval.pipeline import dense_status

    problem = dense_status(db, settings)
    if problem is not None:
        raise SchemaMismatchError(f"cannot learn a query adaptation: {problem}")
    with db.connect() as conn:
        model = sql.embedding_space_model(conn)
        conn.rollback()
    assert model is not None
    return model


def _baseline(db: Database, scope: Scope, tenant: str | None, query_model: str) -> ActiveAdaptation | None:
    """The adaptation searches of ``tenant`` use now (None: none applies), with its parameters."""
    from medpg.learning.active import lookup

    with db.connect() as conn:
        if tenant is not None:
            scope.apply(conn)  # the tenant's own, else the one for every tenant
        found = lookup(conn, db, query_model)
        conn.rollback()
    return found


_CHUNKS = """
SELECT c.document_id, c.embedding FROM medpg.chunks c
WHERE c.embedding_model = %(model)s AND (%(ids)s::bigint[] IS NULL OR c.document_id = ANY(%(ids)s::bigint[]))
"""
_CHUNK_COUNT = "SELECT count(*) FROM medpg.chunks c WHERE c.embedding_model = %s"


def _document_vectors(
    db: Database,
    settings: Settings,
    scope: Scope,
    article_model: str,
    train: Judgments,
    train_vectors: np.ndarray,
    config: TrainConfig,
    filters: Filters,
    log_line: Callable[[str], None],
) -> tuple[DocumentVectors, dict[str, list[int]]]:
    """Chunk vectors of the scope's corpus when it has at most ``config.all_documents_up_to``
    chunks (every document is then a negative); otherwise of the judged documents and the training
    queries' hard negatives, which are returned too."""
    with db.connect() as conn:
        scope.apply(conn)
        row = conn.execute(_CHUNK_COUNT, (article_model,)).fetchone()
        total = int(row[0]) if row else 0
        ids: list[int] | None = None
        negatives: dict[str, list[int]] = {}
        if total > config.all_documents_up_to:
            log_line(f"{total:,} chunks: finding {config.hard_negatives} hard negatives per training query")
            negatives = _hard_negatives(conn, settings, train, train_vectors, config, filters)
            judged = {d for docs in train.qrels.values() for d in docs}
            ids = sorted(judged | {d for ds in negatives.values() for d in ds})
        rows = conn.execute(_CHUNKS, {"model": article_model, "ids": ids}).fetchall()
        conn.rollback()
    if not rows:
        raise InputError("no stored chunk vectors of the judged documents: run `medpg embed` first")
    vectors = np.stack([np.asarray(r[1].to_numpy(), dtype=np.float32) for r in rows])
    return DocumentVectors.from_rows([int(r[0]) for r in rows], vectors), negatives


def _hard_negatives(
    conn: Any,
    settings: Settings,
    train: Judgments,
    vectors: np.ndarray,
    config: TrainConfig,
    filters: Filters,
) -> dict[str, list[int]]:
    """Per training query, the top documents of medpg's dense retrieval that it does not judge relevant."""
    out: dict[str, list[int]] = {}
    for qid, vector in zip(train.ids, vectors, strict=True):
        wanted = min(1000, config.hard_negatives + len(train.qrels[qid]))
        params = search_params(
            settings,
            k=wanted,
            mode="dense",
            lexical=settings.lexical_scorer,
            fusion=settings.fusion,
            candidates=wanted,
        )
        rows = sql.hybrid_search(conn, train.queries[qid], vector, params, filters)
        out[qid] = [r.document_id for r in rows if train.qrels[qid].get(r.document_id, 0) <= 0][
            : config.hard_negatives
        ]
    return out


def _training_set(
    train: Judgments, vectors: np.ndarray, documents: DocumentVectors, hard: dict[str, list[int]]
) -> TrainingSet:
    """Training queries with their relevant documents and negatives as positions in ``documents``."""
    keep: list[int] = []
    relevant: list[dict[int, float]] = []
    negatives: list[np.ndarray] = []
    for i, qid in enumerate(train.ids):
        docs = train.qrels[qid]
        pos_ids = [d for d, g in docs.items() if g > 0]
        positions = documents.index_of(pos_ids)
        rel = {int(p): float(docs[d]) for d, p in zip(pos_ids, positions, strict=True) if p >= 0}
        if not rel:
            continue
        neg_ids = [d for d, g in docs.items() if g <= 0] + hard.get(qid, [])
        neg = documents.index_of(neg_ids) if neg_ids else np.zeros(0, dtype=np.int64)
        keep.append(i)
        relevant.append(rel)
        negatives.append(np.unique(neg[neg >= 0]).astype(np.int64))
    return TrainingSet(np.asarray(vectors, dtype=np.float32)[keep], relevant, negatives)


__all__ = ["LearnReport", "learn"]
