"""Fusion arithmetic as pure functions: the reference the SQL in ``medpg.fuse`` is tested against.

Two ways to combine a dense and a lexical candidate list into one ranking:

- **Reciprocal rank fusion** (Cormack et al., 2009): ``w_d / (k + rank_d) + w_l / (k + rank_l)``; a
  list that did not rank a document adds nothing. Uses ranks only, so it needs no calibration.
- **Weighted normalized scores**: ``w_d * minmax(score_d) + w_l * minmax(score_l)``, each list's
  scores min-max normalized over the documents *that list ranked*. A document the other list did
  not rank still brings its real score from that retriever when it is known (medpg asks each
  retriever for the scores of the other's candidates: "full-information" fusion), which can fall
  below 0 after normalization; an unknown score adds nothing.

``blend_rerank`` mixes a calibrated cross-encoder score with first-stage scores (RadLIT style).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from medpg.vocabulary import FUSION_METHODS, FusionMethod

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Candidate:
    """One document's first-stage evidence; a rank is None when that list did not rank it."""

    document_id: Hashable
    dense_rank: int | None = None
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None


def minmax(score: float | None, lo: float | None, hi: float | None) -> float | None:
    """``(score - lo) / (hi - lo)``; 1 or 0 when the range is empty; None when anything is unknown."""
    if score is None or lo is None or hi is None:
        return None
    if hi > lo:
        return (score - lo) / (hi - lo)
    return 1.0 if score >= hi else 0.0


def _range(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    return (min(known), max(known)) if known else (None, None)


def rrf_score(ranks: Sequence[int | None], weights: Sequence[float], k: int = 60) -> float:
    """Weighted reciprocal rank fusion of one document's ranks (1-based; None = not ranked)."""
    return sum(w / (k + r) for r, w in zip(ranks, weights, strict=True) if r is not None)


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[Hashable]], weights: Sequence[float] | None = None, k: int = 60
) -> dict[Hashable, float]:
    """RRF of ranked id lists (best first): id -> fused score."""
    weights = [1.0] * len(lists) if weights is None else list(weights)
    if len(weights) != len(lists):
        raise ValueError("one weight per list")
    fused: dict[Hashable, float] = {}
    for ids, w in zip(lists, weights, strict=True):
        for rank, doc in enumerate(ids, start=1):
            fused[doc] = fused.get(doc, 0.0) + w / (k + rank)
    return fused


def fuse(
    candidates: Sequence[Candidate],
    method: FusionMethod = "weighted",
    *,
    rrf_k: int = 60,
    dense_weight: float = 0.5,
    lexical_weight: float = 0.5,
) -> dict[Hashable, float]:
    """Fused score per document, exactly as ``medpg.fuse`` computes it in SQL."""
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}: use one of {', '.join(FUSION_METHODS)}")
    if method == "rrf":
        return {
            c.document_id: rrf_score([c.dense_rank, c.lexical_rank], [dense_weight, lexical_weight], rrf_k)
            for c in candidates
        }
    dlo, dhi = _range(c.dense_score for c in candidates if c.dense_rank is not None)
    llo, lhi = _range(c.lexical_score for c in candidates if c.lexical_rank is not None)
    out: dict[Hashable, float] = {}
    for c in candidates:
        d = minmax(c.dense_score, dlo, dhi)
        lx = minmax(c.lexical_score, llo, lhi)
        out[c.document_id] = dense_weight * (d or 0.0) + lexical_weight * (lx or 0.0)
    return out


def rank_fused(fused: Mapping[Any, float]) -> list[Any]:
    """Ids best first; ties broken by id, as the SQL does."""
    return [doc for doc, _ in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))]


def sigmoid(x: float) -> float:
    """Logistic function, safe for large magnitudes."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def blend_rerank(
    rerank_scores: Mapping[K, float],
    dense_scores: Mapping[K, float | None],
    lexical_scores: Mapping[K, float | None],
    *,
    rerank_weight: float = 1.0,
    dense_weight: float = 0.0,
    lexical_weight: float = 0.0,
) -> dict[K, float]:
    """Final score of reranked documents: ``w_ce * sigmoid(ce) + w_d * minmax(dense) + w_l * minmax(lex)``.

    ``rerank_scores`` are already calibrated logits (logit / temperature), so the sigmoid gives a
    probability-like value in [0, 1]; the first-stage scores are min-max normalized over the
    reranked documents so the three terms share a scale. With the default weights this is the
    cross-encoder's order.
    """
    ids = list(rerank_scores)
    dlo, dhi = _range(dense_scores.get(i) for i in ids)
    llo, lhi = _range(lexical_scores.get(i) for i in ids)
    out: dict[K, float] = {}
    for i in ids:
        d = minmax(dense_scores.get(i), dlo, dhi)
        lx = minmax(lexical_scores.get(i), llo, lhi)
        out[i] = (
            rerank_weight * sigmoid(rerank_scores[i])
            + dense_weight * (d or 0.0)
            + lexical_weight * (lx or 0.0)
        )
    return out


__all__ = [
    "Candidate",
    "FusionMethod",
    "blend_rerank",
    "fuse",
    "minmax",
    "rank_fused",
    "reciprocal_rank_fusion",
    "rrf_score",
    "sigmoid",
]
