"""Sentence-transformers encoders: any bi-encoder and any cross-encoder chosen by configuration.

The library's own contract is used: ``SentenceTransformer.encode_query`` / ``encode_document``
(so a model's own query/document prompts and asymmetric routing apply), ``CrossEncoder.rank``.
Pooling, normalization and dimension come from the model itself. medpg adds optional explicit
query/document prefixes (MEDPG_QUERY_PREFIX / MEDPG_DOCUMENT_PREFIX, BGE/E5 style, passed as
``prompt=`` so prompt-aware pooling works and they win over the model's own prompts), its token
limits, token-budget batches, half precision on GPUs, and a temperature on cross-encoder logits.

Works with sentence-transformers 5.0 and later: truncation is set with ``max_seq_length`` (not
6.0's per-call ``processing_kwargs``), under a lock because the query and article roles share
one loaded model with different limits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from medpg.encoders.base import (
    EncoderSpec,
    RerankCandidate,
    check_lengths,
    check_profile_dimension,
    document_text,
)
from medpg.encoders.batching import token_budget_batches
from medpg.encoders.device import inference_dtype
from medpg.encoders.hub import (
    ModelLocation,
    locate_model,
    missing_model_message,
    model_identity,
    require_model,
)
from medpg.encoders.medcpt import quiet_loading
from medpg.errors import ConfigError, ModelNotAvailableError

log = logging.getLogger(__name__)


def _locate(spec: EncoderSpec) -> tuple[ModelLocation, bool]:
    if spec.hf_offline:
        return require_model(spec.model, spec.role, spec.profile), True
    location = locate_model(spec.model)
    return location, location.available


@dataclass(frozen=True)
class _SharedModel:
    """One loaded SentenceTransformer shared by the query and article roles.

    ``max_seq_length`` is the model's own input limit, read at load (roles then set their own);
    ``lock`` guards setting a role's limit together with the encode that uses it.
    """

    model: Any
    max_seq_length: int | None
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False)


@lru_cache(maxsize=4)
def _load_bi_encoder(model: str, device: str, local_only: bool) -> _SharedModel:
    # Keyed without the role so the query and article encoders share one copy of the model.
    from sentence_transformers import SentenceTransformer

    with quiet_loading():
        st = SentenceTransformer(model, device=device, local_files_only=local_only)
    st = st.to(inference_dtype(device)).eval()
    return _SharedModel(st, st.max_seq_length)


def _embedding_dimension(model: Any) -> int | None:
    """The model's output dimension: ``get_embedding_dimension`` (6.0+) or its 5.x name."""
    getter = getattr(type(model), "get_embedding_dimension", None)
    if getter is None:
        getter = type(model).get_sentence_embedding_dimension
    value = getter(model)
    return int(value) if value else None


@lru_cache(maxsize=4)
def _load_cross_encoder(model: str, device: str, local_only: bool, max_length: int) -> Any:
    from sentence_transformers import CrossEncoder

    with quiet_loading():
        ce = CrossEncoder(model, device=device, local_files_only=local_only, max_length=max_length)
    return ce.to(inference_dtype(device)).eval()


def _not_available(spec: EncoderSpec, exc: Exception) -> ModelNotAvailableError:
    reason = " ".join(str(exc).split())[:200]
    return ModelNotAvailableError(missing_model_message(spec.model, spec.role, spec.profile, reason))


class _STBiEncoder:
    """Shared by the query and article roles: one SentenceTransformer, role-specific prefix and limit."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        location, local_only = _locate(spec)
        try:
            self._shared = _load_bi_encoder(spec.model, spec.device, local_only)
        except (OSError, ValueError) as exc:
            raise _not_available(spec, exc) from None
        self.model = self._shared.model
        self.model_name = model_identity(location if location.available else locate_model(spec.model))
        dimension = _embedding_dimension(self.model)
        if not dimension:
            raise ConfigError(f"cannot tell the output dimension of {spec.model!r}; is it a text embedder?")
        self.dimension = dimension
        self.similarity = spec.similarity
        check_profile_dimension(self.dimension, spec.dimension, spec.model)
        model_limit = self._shared.max_seq_length or spec.max_tokens
        self.max_tokens = min(int(model_limit), spec.max_tokens)
        log.info("loaded %s model %s on %s", spec.role, self.model_name, spec.device)

    def _run(self, texts: list[str], prompt: str | None) -> np.ndarray:
        """One batch through the role's sentence-transformers method (``encode_query`` / ``encode_document``)."""
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        prefix = self.spec.prefix
        lengths = [
            len(ids)
            for ids in self.model.tokenizer(
                [prefix + t for t in texts], truncation=True, max_length=self.max_tokens
            )["input_ids"]
        ]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for batch in token_budget_batches(lengths, self.spec.batch_size, self.spec.max_tokens_per_batch):
            with self._shared.lock:
                self.model.max_seq_length = self.max_tokens  # this role's truncation (MEDPG_*_MAX_TOKENS)
                vectors = self._run([texts[i] for i in batch], prefix or None)
            out[batch] = vectors.astype(np.float32, copy=False)
        return out

    def _options(self, batch_size: int) -> dict[str, Any]:
        return {
            "batch_size": batch_size,
            "convert_to_numpy": True,
            "normalize_embeddings": self.similarity == "cosine",
            "show_progress_bar": False,
        }


class STQueryEncoder(_STBiEncoder):
    """Queries as ``query_prefix + query``; normalized when the similarity is cosine."""

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """One float32 row per query, in input order."""
        return self._encode(list(queries))

    def _run(self, texts: list[str], prompt: str | None) -> np.ndarray:
        vectors: np.ndarray = self.model.encode_query(texts, prompt=prompt, **self._options(len(texts)))
        return vectors


class STArticleEncoder(_STBiEncoder):
    """Documents as ``document_prefix + "title. text"``; normalized when the similarity is cosine."""

    def encode_documents(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One float32 row per document, in input order."""
        check_lengths(titles, texts)
        return self._encode([document_text(t, x) for t, x in zip(titles, texts, strict=True)])

    def _run(self, texts: list[str], prompt: str | None) -> np.ndarray:
        vectors: np.ndarray = self.model.encode_document(texts, prompt=prompt, **self._options(len(texts)))
        return vectors


class STCrossEncoder:
    """Any sentence-transformers cross-encoder with one output; score = logit / temperature."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        location, local_only = _locate(spec)
        try:
            self.model = _load_cross_encoder(spec.model, spec.device, local_only, spec.max_tokens)
        except (OSError, ValueError) as exc:
            raise _not_available(spec, exc) from None
        self.model_name = model_identity(location if location.available else locate_model(spec.model))
        if self.model.num_labels != 1:
            raise ConfigError(
                f"cross-encoder {spec.model!r} has {self.model.num_labels} output labels; medpg needs a "
                "reranker with one logit (set MEDPG_CROSS_ENCODER_MODEL to a reranker, or 'none')"
            )
        log.info("loaded cross-encoder %s on %s", self.model_name, spec.device)

    def rerank(self, query: str, candidates: Sequence[RerankCandidate]) -> list[tuple[Any, float]]:
        """(id, score) for every candidate, best first; raw logits divided by the temperature."""
        import torch

        if not candidates:
            return []
        ranked = self.model.rank(
            query,
            [document_text(c.title, c.text) for c in candidates],
            batch_size=self.spec.batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
        )
        logits = np.asarray([r["score"] for r in ranked], dtype=np.float32) / self.spec.temperature
        return [(candidates[int(r["corpus_id"])].id, float(s)) for r, s in zip(ranked, logits, strict=True)]
