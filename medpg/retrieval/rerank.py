"""Cross-encoder reranking of the first stage's top K, optionally blended with first-stage scores.

The cross-encoder reads (query, "title. passage") pairs. The passage is the document's evidence
chunk (the one that matched best), so a long document is judged on its relevant part and fits
the encoder's window. Scores are calibrated logits (logit / MEDPG_CROSS_ENCODER_TEMPERATURE);
``medpg.retrieval.fusion.blend_rerank`` turns them into the final score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medpg.retrieval.fusion import blend_rerank

if TYPE_CHECKING:
    from medpg.encoders.base import CrossEncoder


@dataclass(frozen=True)
class RerankItem:
    """One first-stage result offered to the cross-encoder, with the scores a blend may mix in."""

    document_id: int
    title: str
    text: str
    dense_score: float | None
    lexical_score: float | None


def rerank(
    cross_encoder: CrossEncoder,
    query: str,
    items: Sequence[RerankItem],
    *,
    rerank_weight: float = 1.0,
    dense_weight: float = 0.0,
    lexical_weight: float = 0.0,
) -> tuple[dict[int, float], dict[int, float]]:
    """Cross-encoder scores and final (blended) scores per document id."""
    from medpg.encoders import RerankCandidate

    if not items:
        return {}, {}
    ranked = cross_encoder.rerank(
        query, [RerankCandidate(id=i.document_id, title=i.title, text=i.text) for i in items]
    )
    ce = {int(doc_id): float(score) for doc_id, score in ranked}
    final = blend_rerank(
        ce,
        {i.document_id: i.dense_score for i in items},
        {i.document_id: i.lexical_score for i in items},
        rerank_weight=rerank_weight,
        dense_weight=dense_weight,
        lexical_weight=lexical_weight,
    )
    return ce, final


__all__ = ["RerankItem", "rerank"]
