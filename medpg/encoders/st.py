"""Sentence-transformers encoders: any bi-encoder and any cross-encoder chosen by configuration.

Pooling, normalization and dimension come from the model itself (SentenceTransformer runs its
own modules). medpg adds optional query/document prefixes (BGE/E5 style, passed as the model's
prompt so prompt-aware pooling works), its token limits, token-budget batches, half precision on
GPUs, and a temperature on cross-encoder logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from medpg.encoders.base import (
    EncoderSpec,
    RerankCandidate,
    check_lengths,
    check_profile_dimension,
    document_text,
    sort_scores,
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


@lru_cache(maxsize=4)
def _load_bi_encoder(model: str, device: str, local_only: bool) -> Any:
    # Keyed without the role so the query and article encoders share one copy of the model.
    from sentence_transformers import SentenceTransformer

    with quiet_loading():
        st = SentenceTransformer(model, device=device, local_files_only=local_only)
    return st.to(inference_dtype(device)).eval()


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
            self.model = _load_bi_encoder(spec.model, spec.device, local_only)
        except (OSError, ValueError) as exc:
            raise _not_available(spec, exc) from None
        self.model_name = model_identity(location if location.available else locate_model(spec.model))
        dimension = self.model.get_embedding_dimension()
        if not dimension:
            raise ConfigError(f"cannot tell the output dimension of {spec.model!r}; is it a text embedder?")
        self.dimension = int(dimension)
        self.similarity = spec.similarity
        check_profile_dimension(self.dimension, spec.dimension, spec.model)
        model_limit = self.model.max_seq_length or spec.max_tokens
        self.max_tokens = min(int(model_limit), spec.max_tokens)
        log.info("loaded %s model %s on %s", spec.role, self.model_name, spec.device)

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
            out[batch] = self.model.encode(
                [texts[i] for i in batch],
                prompt=prefix or None,
                batch_size=len(batch),
                convert_to_numpy=True,
                normalize_embeddings=self.similarity == "cosine",
                show_progress_bar=False,
                processing_kwargs={"text": {"max_length": self.max_tokens}},
            ).astype(np.float32, copy=False)
        return out


class STQueryEncoder(_STBiEncoder):
    """Queries as ``query_prefix + query``; normalized when the similarity is cosine."""

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """One float32 row per query, in input order."""
        return self._encode(list(queries))


class STArticleEncoder(_STBiEncoder):
    """Documents as ``document_prefix + "title. text"``; normalized when the similarity is cosine."""

    def encode_documents(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One float32 row per document, in input order."""
        check_lengths(titles, texts)
        return self._encode([document_text(t, x) for t, x in zip(titles, texts, strict=True)])


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
        log.info("loaded cross model %s on %s", self.model_name, spec.device)

    def rerank(self, query: str, candidates: Sequence[RerankCandidate]) -> list[tuple[Any, float]]:
        """(id, score) for every candidate, best first; raw logits divided by the temperature."""
        import torch

        if not candidates:
            return []
        pairs = [(query, document_text(c.title, c.text)) for c in candidates]
        logits = self.model.predict(
            pairs,
            batch_size=self.spec.batch_size,
            activation_fn=torch.nn.Identity(),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        scores = (np.asarray(logits, dtype=np.float32).reshape(-1) / self.spec.temperature).tolist()
        return sort_scores([c.id for c in candidates], scores)
