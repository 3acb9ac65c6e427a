"""Scoring an adaptation on held-out judgments through medpg's own search functions.

Every figure ``medpg learn`` prints or stores comes from ``medpg.hybrid_search`` in PostgreSQL,
the function search uses, with the query vectors adapted as search would adapt them and the
fusion weights given: the held-out nDCG@10 of the default hybrid search (the guard's figure), or of
dense retrieval alone (early stopping). Queries run under the scope of the documents' tenant,
so other tenants' documents neither compete nor count. Metrics come from ranx.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medpg.access import Scope
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.learning.adapter import ResidualLinear
from medpg.learning.judgments import Judgments
from medpg.retrieval import sql
from medpg.retrieval.pipeline import search_params
from medpg.retrieval.types import Filters

RANKED = 100  # documents ranked per query (nDCG@10 reads the first 10)

#: Dense weights tried when the fusion weights are learned (lexical weight = 1 - dense weight).
DENSE_WEIGHT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> float:
    """nDCG@10 (ranx, linear gains as trec_eval) over every judged query; an empty result scores 0."""
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    from medpg.dependency_warnings import ranx_compiling_quietly

    filled = {q: (run.get(q) or {"__no_result__": 0.0}) for q in qrels}
    with ranx_compiling_quietly():
        return float(ranx_evaluate(Qrels(qrels), Run(filled), "ndcg@10", make_comparable=True))


@dataclass(frozen=True)
class HeldOut:
    """Held-out queries with their raw query vectors, ready to be ranked under a scope."""

    db: Database
    settings: Settings
    judgments: Judgments
    vectors: np.ndarray
    scope: Scope
    filters: Filters

    def rankings(
        self, adapter: ResidualLinear | None, *, mode: str, weights: tuple[float, float]
    ) -> dict[str, dict[str, float]]:
        """Each held-out query's top documents (medpg ids as strings, scores from ranks)."""
        vectors = adapter.apply(self.vectors) if adapter is not None else self.vectors
        params = search_params(
            self.settings,
            k=RANKED,
            mode=mode,
            lexical=self.settings.lexical_scorer,
            fusion=self.settings.fusion,
            weights=weights,
        )
        run: dict[str, dict[str, float]] = {}
        with self.db.connect() as conn:
            self.scope.apply(conn)
            for qid, vector in zip(self.judgments.ids, vectors, strict=True):
                rows = sql.hybrid_search(conn, self.judgments.queries[qid], vector, params, self.filters)
                run[qid] = {str(r.document_id): float(RANKED - i) for i, r in enumerate(rows)}
            conn.rollback()
        return run

    def ndcg10(
        self, adapter: ResidualLinear | None, *, mode: str = "hybrid", weights: tuple[float, float]
    ) -> float:
        return ndcg10(self.judgments.relevant(), self.rankings(adapter, mode=mode, weights=weights))

    def best_weights(
        self,
        adapter: ResidualLinear | None,
        grid: Sequence[float] = DENSE_WEIGHT_GRID,
        *,
        prefer: float = 0.5,
    ) -> tuple[tuple[float, float], float, list[dict[str, Any]]]:
        """The (dense, lexical) weights of the grid with the best held-out hybrid nDCG@10 (ties: the
        one nearest ``prefer``), that figure, and every point tried."""
        tried = []
        for w in grid:
            weights = (round(w, 4), round(1.0 - w, 4))
            tried.append(
                {
                    "dense_weight": weights[0],
                    "lexical_weight": weights[1],
                    "ndcg10": self.ndcg10(adapter, weights=weights),
                }
            )
        best = max(tried, key=lambda t: (round(t["ndcg10"], 10), -abs(t["dense_weight"] - prefer)))
        return (best["dense_weight"], best["lexical_weight"]), best["ndcg10"], tried


__all__ = ["DENSE_WEIGHT_GRID", "HeldOut", "ndcg10"]
