"""The three encoder roles, their shared records, and the checks around them (no torch here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from medpg.errors import ConfigError, SchemaMismatchError
from medpg.vocabulary import EncoderKind, EncoderRole, Similarity

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class RerankCandidate:
    """One document offered to the cross-encoder: its id, title and text."""

    id: Any
    title: str
    text: str


@runtime_checkable
class QueryEncoder(Protocol):
    """Turns queries into vectors comparable with the article encoder's."""

    model_name: str
    dimension: int

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ArticleEncoder(Protocol):
    """Turns (title, text) documents into vectors, in input order."""

    model_name: str
    dimension: int
    similarity: Similarity

    def encode_documents(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class CrossEncoder(Protocol):
    """Scores (query, document) pairs jointly; used to rerank a short candidate list."""

    model_name: str

    def rerank(self, query: str, candidates: Sequence[RerankCandidate]) -> list[tuple[Any, float]]: ...


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides how one encoder is loaded and run; hashable, so loads are cached."""

    role: EncoderRole
    kind: EncoderKind
    model: str
    profile: str
    device: str
    hf_offline: bool
    max_tokens: int
    batch_size: int
    max_tokens_per_batch: int
    prefix: str = ""
    dimension: int = 0
    similarity: Similarity = "ip"
    temperature: float = 1.0


def document_text(title: str, text: str) -> str:
    """A document as one string, ``"title. text"``: what single-text models and cross-encoders read."""
    return ". ".join(part for part in (title.strip(), text.strip()) if part)


def check_dimension(encoder_dim: int, column_dim: int, model: str) -> None:
    """Refuse to write or search vectors whose dimension differs from the database column's."""
    if encoder_dim != column_dim:
        raise SchemaMismatchError(
            f"model {model!r} makes {encoder_dim}-dimensional vectors but the database column holds "
            f"{column_dim}-dimensional ones; use a model with {column_dim} dimensions, or re-create the "
            f"embeddings for this model (set MEDPG_EMBEDDING_DIM={encoder_dim} and migrate a new database)"
        )


def check_profile_dimension(encoder_dim: int, profile_dim: int, model: str) -> None:
    """Refuse a model whose output disagrees with the configured dimension (the column to be made)."""
    if encoder_dim != profile_dim:
        raise ConfigError(
            f"model {model!r} makes {encoder_dim}-dimensional vectors but the configured dimension is "
            f"{profile_dim}; set MEDPG_EMBEDDING_DIM={encoder_dim} "
            f"or choose a {profile_dim}-dimensional model"
        )


def check_lengths(titles: Sequence[str], texts: Sequence[str]) -> None:
    """Titles and texts are parallel lists; a length mismatch is a caller bug worth a clear message."""
    if len(titles) != len(texts):
        raise ValueError(f"encode_documents got {len(titles)} titles but {len(texts)} texts")


def sort_scores(ids: Sequence[Any], scores: Sequence[float]) -> list[tuple[Any, float]]:
    """(id, score) records, best first; ties keep the candidates' order."""
    order = sorted(range(len(ids)), key=lambda i: -scores[i])
    return [(ids[i], float(scores[i])) for i in order]
