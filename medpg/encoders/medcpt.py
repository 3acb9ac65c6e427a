"""MedCPT-style encoders on plain transformers: CLS pooling, pair inputs, single-logit reranker.

Follows the MedCPT model cards: queries truncated at 64 tokens, articles tokenized as a
(title, abstract) pair truncated at 512, embeddings ``last_hidden_state[:, 0]`` compared by inner
product, and the cross-encoder reading (query, "title. abstract") pairs and returning one logit.
What the cards leave to the caller is done for speed: inputs are tokenized once without padding,
grouped into length-sorted token-budget batches, run under ``torch.inference_mode`` (half precision
on GPUs), and results are scattered back to input order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

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
from medpg.encoders.hub import Role, locate_model, missing_model_message, model_identity, require_model
from medpg.errors import ConfigError, ModelNotAvailableError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Head = Literal["model", "sequence-classification"]


class Backbone:
    """A loaded tokenizer and model on a device, plus the runner every MedCPT-style role shares."""

    def __init__(self, tokenizer: Any, model: Any, device: str, model_name: str) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.model_name = model_name
        self.input_names = [n for n in tokenizer.model_input_names if n != "attention_mask"]

    def tokenize(
        self, first: list[str], second: list[str] | None, max_tokens: int
    ) -> dict[str, list[list[int]]]:
        """Token ids without padding (padding is per batch, after sorting by length)."""
        max_tokens = min(max_tokens, _model_max_positions(self.model))
        encoded = self.tokenizer(
            first,
            second,
            truncation=True,
            max_length=max_tokens,
            padding=False,
            return_attention_mask=False,
        )
        return {name: encoded[name] for name in self.input_names if name in encoded}

    def run(
        self,
        features: dict[str, list[list[int]]],
        head: Callable[[Any], torch.Tensor],
        batch_size: int,
        max_tokens_per_batch: int,
    ) -> np.ndarray:
        """Run the model over length-sorted token-budget batches; rows come back in input order."""
        import torch

        lengths = [len(ids) for ids in features["input_ids"]]
        out: np.ndarray | None = None
        with torch.inference_mode():
            for batch in token_budget_batches(lengths, batch_size, max_tokens_per_batch):
                inputs = self._pad(features, batch)
                values = head(self.model(**inputs)).float().cpu().numpy()
                if out is None:
                    out = np.empty((len(lengths), *values.shape[1:]), dtype=np.float32)
                out[batch] = values
        return out if out is not None else np.empty((0,), dtype=np.float32)

    def _pad(self, features: dict[str, list[list[int]]], batch: list[int]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(features["input_ids"][i]) for i in batch)
        pad_id = self.tokenizer.pad_token_id or 0
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        arrays = {
            name: np.full((len(batch), width), pad_id if name == "input_ids" else 0, dtype=np.int64)
            for name in features
        }
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, index in enumerate(batch):
            n = len(features["input_ids"][index])
            cols = slice(width - n, width) if left else slice(0, n)
            for name, array in arrays.items():
                array[row, cols] = features[name][index]
            mask[row, cols] = 1
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
        tensors["attention_mask"] = torch.from_numpy(mask)
        return {name: t.to(self.device) for name, t in tensors.items()}


def _model_max_positions(model: Any) -> int:
    limit = getattr(model.config, "max_position_embeddings", None)
    # RoBERTa-style models reserve two positions for the padding offset.
    if getattr(model.config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"} and limit:
        limit -= 2
    return int(limit) if limit else 1_000_000


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-load progress bars (CLI output stays one line per result)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@lru_cache(maxsize=8)
def load_backbone(
    model: str, role: Role, profile: str, device: str, hf_offline: bool, head: Head
) -> Backbone:
    """Load tokenizer and model through ``from_pretrained`` (a hub name, a directory or the cache).

    A model already on disk is loaded with ``local_files_only=True`` even when the hub is allowed,
    so a cached model never waits on the network; a missing one raises ModelNotAvailableError.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    location = require_model(model, role, profile) if hf_offline else locate_model(model)
    local_only = hf_offline or location.available
    model_class = AutoModelForSequenceClassification if head == "sequence-classification" else AutoModel
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_only)
            network = model_class.from_pretrained(model, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelNotAvailableError(missing_model_message(model, role, profile, reason)) from None
    dtype = inference_dtype(device)
    network = network.to(device=device, dtype=dtype).eval()
    if not location.available:  # it was just downloaded: name it by its cache snapshot
        location = locate_model(model)
    name = model_identity(location)
    log.info("loaded %s model %s on %s (%s)", role, name, device, str(dtype).replace("torch.", ""))
    return Backbone(tokenizer, network, device, name)


def _spec_backbone(spec: EncoderSpec, head: Head) -> Backbone:
    return load_backbone(spec.model, spec.role, spec.profile, spec.device, spec.hf_offline, head)


def _cls(output: Any) -> torch.Tensor:
    return output.last_hidden_state[:, 0, :]


class MedCPTQueryEncoder:
    """Query encoder: CLS vector of the query, truncated at ``spec.max_tokens`` (64 for MedCPT)."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        self.backbone = _spec_backbone(spec, "model")
        self.model_name = self.backbone.model_name
        self.dimension = int(self.backbone.model.config.hidden_size)
        check_profile_dimension(self.dimension, spec.dimension, spec.model)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """One float32 row per query, in input order."""
        if not queries:
            return np.zeros((0, self.dimension), dtype=np.float32)
        texts = [self.spec.prefix + q for q in queries]
        features = self.backbone.tokenize(texts, None, self.spec.max_tokens)
        return self.backbone.run(features, _cls, self.spec.batch_size, self.spec.max_tokens_per_batch)


class MedCPTArticleEncoder:
    """Article encoder: CLS vector of the (title, text) pair, truncated at ``spec.max_tokens`` (512)."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        self.backbone = _spec_backbone(spec, "model")
        self.model_name = self.backbone.model_name
        self.dimension = int(self.backbone.model.config.hidden_size)
        self.similarity = spec.similarity
        check_profile_dimension(self.dimension, spec.dimension, spec.model)

    def encode_documents(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One float32 row per document, in input order."""
        check_lengths(titles, texts)
        if not titles:
            return np.zeros((0, self.dimension), dtype=np.float32)
        firsts = [self.spec.prefix + t for t in titles]
        features = self.backbone.tokenize(firsts, list(texts), self.spec.max_tokens)
        return self.backbone.run(features, _cls, self.spec.batch_size, self.spec.max_tokens_per_batch)


class MedCPTCrossEncoder:
    """Cross-encoder: one logit per (query, "title. text") pair; score = logit / temperature."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        self.backbone = _spec_backbone(spec, "sequence-classification")
        self.model_name = self.backbone.model_name
        labels = int(getattr(self.backbone.model.config, "num_labels", 1))
        if labels != 1:
            raise ConfigError(
                f"cross-encoder {spec.model!r} has {labels} output labels; medpg needs a reranker with one "
                "logit (set MEDPG_CROSS_ENCODER_MODEL to a reranker, or 'none')"
            )

    def rerank(self, query: str, candidates: Sequence[RerankCandidate]) -> list[tuple[Any, float]]:
        """(id, score) for every candidate, best first."""
        if not candidates:
            return []
        queries = [query] * len(candidates)
        docs = [document_text(c.title, c.text) for c in candidates]
        features = self.backbone.tokenize(queries, docs, self.spec.max_tokens)
        logits = self.backbone.run(
            features, lambda out: out.logits[:, 0], self.spec.batch_size, self.spec.max_tokens_per_batch
        )
        scores = (logits / self.spec.temperature).tolist()
        return sort_scores([c.id for c in candidates], scores)
