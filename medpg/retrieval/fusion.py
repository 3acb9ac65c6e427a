"""Fusion arithmetic as pure functions: the reference the SQL in ``medpg.fuse`` is tested against.

Three ways to combine a dense and a lexical candidate list into one ranking:

- **Reciprocal rank fusion** (Cormack et al., 2009): ``w_d / (k + rank_d) + w_l / (k + rank_l)``; a
  list that did not rank a document adds nothing. Uses ranks only, so it needs no calibration.
- **Weighted normalized scores**: ``w_d * minmax(score_d) + w_l * minmax(score_l)``, each list's
  scores min-max normalized over the documents *that list ranked*. A document the other list did
  not rank still brings its real score from that retriever when it is known (medpg asks each
  retriever for the scores of the other's candidates: "full-information" fusion), which can fall
  below 0 after normalization; an unknown score adds nothing.
- **Adaptive** (the default): weighted, with the lexical weight scaled per query by its *lexical
  coverage* (``lexical_coverage``): the share of the query's idf mass carried by lexemes that occur
  in the corpus. A query whose words the corpus does not use (misspellings, lay words for the
  corpus's terms) leans on the dense leg instead of mixing in a BM25 list that matched noise.

``rocchio_vector`` and ``feedback_candidates`` are the pseudo-relevance feedback of
``medpg.hybrid_search`` (``feedback='rocchio'``): the query vector moved toward the first fusion's
top documents' best chunks, every candidate rescored by it, the dense list re-ranked.

``blend_rerank`` mixes a calibrated cross-encoder score with first-stage scores (RadLIT style).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

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
    lexical_coverage: float = 1.0,
) -> dict[Hashable, float]:
    """Fused score per document, exactly as ``medpg.fuse`` computes it in SQL.

    ``lexical_coverage`` (0..1) scales the lexical weight of the ``adaptive`` method only.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}: use one of {', '.join(FUSION_METHODS)}")
    if method == "rrf":
        return {
            c.document_id: rrf_score([c.dense_rank, c.lexical_rank], [dense_weight, lexical_weight], rrf_k)
            for c in candidates
        }
    dlo, dhi = _range(c.dense_score for c in candidates if c.dense_rank is not None)
    llo, lhi = _range(c.lexical_score for c in candidates if c.lexical_rank is not None)
    w_l = lexical_weight * lexical_coverage if method == "adaptive" else lexical_weight
    out: dict[Hashable, float] = {}
    for c in candidates:
        d = minmax(c.dense_score, dlo, dhi)
        lx = minmax(c.lexical_score, llo, lhi)
        out[c.document_id] = dense_weight * (d or 0.0) + w_l * (lx or 0.0)
    return out


def idf(document_frequency: float, documents: float) -> float:
    """Lucene's BM25 idf, as ``medpg.bm25_scores``: ``ln(1 + (N - df + 0.5) / (df + 0.5))``."""
    return math.log(1 + (max(documents - document_frequency, 0) + 0.5) / (document_frequency + 0.5))


def lexical_coverage(
    query_terms: Mapping[str, int], document_frequencies: Mapping[str, int], documents: int
) -> float:
    """Share of the query's idf mass (qtf x idf) whose lexemes occur in the corpus (``medpg.lexical_coverage``).

    ``query_terms``: lexeme -> count in the query; ``document_frequencies``: lexeme -> documents
    containing it (absent or 0: none). A lexeme no document has weighs the largest idf (df = 0).
    0 for a query without lexemes.
    """
    n = max(documents, 1)
    total = seen = 0.0
    for term, qtf in query_terms.items():
        df = document_frequencies.get(term, 0)
        weight = qtf * idf(df, n)
        total += weight
        if df > 0:
            seen += weight
    return seen / total if total > 0 else 0.0


def rocchio_vector(query: Sequence[float], feedback: Sequence[Sequence[float]], weight: float) -> np.ndarray:
    """The query moved toward its feedback vectors: ``|q| * normalize(q/|q| + weight * mean(f/|f|))``.

    As ``medpg.feedback_vector``: the result keeps the query's length; with no feedback vector,
    weight 0, a zero query or a zero sum the query comes back unchanged.
    """
    q = np.asarray(query, dtype=np.float64)
    q_norm = float(np.linalg.norm(q))
    if not len(feedback) or weight <= 0 or q_norm == 0:
        return q
    f = np.asarray(feedback, dtype=np.float64)
    mean = (f / np.linalg.norm(f, axis=1, keepdims=True)).mean(axis=0)
    moved = q / q_norm + weight * mean
    m_norm = float(np.linalg.norm(moved))
    return q if m_norm == 0 else moved / m_norm * q_norm


def feedback_candidates(
    candidates: Sequence[Candidate], dense_scores: Mapping[Hashable, float | None]
) -> list[Candidate]:
    """Candidates after feedback: each dense score replaced by ``dense_scores`` (the moved vector's),
    the dense list's documents ranked anew by it (ties by id), the lexical side unchanged."""
    rescored = [
        Candidate(c.document_id, c.dense_rank, dense_scores.get(c.document_id, c.dense_score),
                  c.lexical_rank, c.lexical_score)
        for c in candidates
    ]
    ranked = sorted(
        (c for c in rescored if c.dense_rank is not None),
        key=lambda c: (c.dense_score is None, -(c.dense_score or 0.0), c.document_id),
    )
    new_rank = {c.document_id: i for i, c in enumerate(ranked, start=1)}
    return [
        Candidate(c.document_id, new_rank.get(c.document_id), c.dense_score, c.lexical_rank, c.lexical_score)
        for c in rescored
    ]


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
    "feedback_candidates",
    "fuse",
    "idf",
    "lexical_coverage",
    "minmax",
    "rank_fused",
    "reciprocal_rank_fusion",
    "rocchio_vector",
    "rrf_score",
    "sigmoid",
]
