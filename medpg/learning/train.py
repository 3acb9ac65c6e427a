"""Training a residual linear query adapter against the stored document vectors (torch, CPU).

For each training query q, the adapted q' scores a document by its best chunk (as medpg's dense
retrieval does: ``max_c q'·c``). The loss is a softmax cross-entropy (InfoNCE) of each judged-
relevant document against the negatives: every other document of the batch's pool that the query
does not judge relevant. When the corpus has at most ``TrainConfig.all_documents_up_to`` chunks,
the pool is every document; otherwise it is the batch's relevant documents (in-batch negatives
for the other queries) and each query's hard negatives (documents judged 0, and the top documents
medpg's own dense retrieval returns for it that are not relevant). On NFCorpus every document beat
in-batch and hard negatives by 0.005 dense nDCG@10 on dev (``benchmarks/results/learn_nfcorpus.md``).
A query's relevant documents share its weight by grade, so a query with 400 judged documents
counts as much as one with 4, as nDCG averages queries.

W starts at zero (the identity), AdamW's weight decay pulls it back towards it, and training stops
when the held-out nDCG@10 (dense retrieval through PostgreSQL, the caller's ``evaluate``) has not
improved for ``patience`` epochs; the best epoch's W is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medpg.learning.adapter import ResidualLinear

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters (the defaults were chosen on NFCorpus train/dev; see the README)."""

    temperature: float = 0.05
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 3
    hard_negatives: int = 100
    all_documents_up_to: int = 100_000
    seed: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class DocumentVectors:
    """The chunk vectors training scores documents with: rows sorted by document.

    ``document_ids[j]`` is a medpg document id; its chunks are rows ``starts[j]:starts[j + 1]``.
    """

    document_ids: np.ndarray
    starts: np.ndarray
    vectors: np.ndarray

    @classmethod
    def from_rows(cls, chunk_documents: Sequence[int], vectors: np.ndarray) -> DocumentVectors:
        """From one document id per chunk row (rows grouped by document, in any document order)."""
        docs = np.asarray(chunk_documents, dtype=np.int64)
        order = np.argsort(docs, kind="stable")
        docs, mat = docs[order], np.asarray(vectors, dtype=np.float32)[order]
        ids, first = np.unique(docs, return_index=True)
        starts = np.append(first, len(docs)).astype(np.int64)
        return cls(ids, starts, mat)

    @property
    def chunk_count(self) -> int:
        return int(self.vectors.shape[0])

    def index_of(self, document_ids: Sequence[int]) -> np.ndarray:
        """Positions of ``document_ids`` in ``self.document_ids``; -1 for those not here."""
        ids = np.asarray(document_ids, dtype=np.int64)
        pos = np.searchsorted(self.document_ids, ids)
        pos = np.clip(pos, 0, max(len(self.document_ids) - 1, 0))
        found = self.document_ids[pos] == ids if len(self.document_ids) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def chunks_of(self, documents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chunk rows, position in ``documents`` of each row's document) for document positions."""
        lengths = self.starts[documents + 1] - self.starts[documents]
        total = int(lengths.sum())
        owner = np.repeat(np.arange(len(documents)), lengths)
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = np.repeat(self.starts[documents], lengths) + offsets
        return rows, owner


@dataclass(frozen=True)
class TrainingSet:
    """Training queries as raw query-encoder vectors, with their documents as positions in a
    ``DocumentVectors``: relevant ones with their grades, and negatives."""

    vectors: np.ndarray
    relevant: list[dict[int, float]]
    negatives: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class Epoch:
    epoch: int
    loss: float
    heldout_ndcg10: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """The best epoch's adapter, its held-out figure, and every epoch (epoch 0: the identity)."""

    adapter: ResidualLinear
    best_epoch: int
    heldout_ndcg10: float
    history: list[Epoch] = field(default_factory=list)
    seconds: float = 0.0


def train_adapter(
    data: TrainingSet,
    documents: DocumentVectors,
    evaluate: Callable[[ResidualLinear], float],
    config: TrainConfig | None = None,
    *,
    log: Callable[[str], None] = lambda _m: None,
) -> TrainResult:
    """Train W from zero; ``evaluate(adapter)`` is the held-out nDCG@10 used for early stopping."""
    import torch

    config = config or TrainConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dim = int(data.vectors.shape[1])
    chunks = torch.from_numpy(documents.vectors)
    queries = torch.from_numpy(np.asarray(data.vectors, dtype=np.float32))
    everything = len(documents.document_ids) > 0 and documents.chunk_count <= config.all_documents_up_to
    whole = _Pool.of(documents, np.arange(len(documents.document_ids))) if everything else None

    weight = torch.zeros(dim, dim, requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=config.learning_rate, weight_decay=config.weight_decay)

    def current() -> ResidualLinear:
        return ResidualLinear(weight.detach().numpy().copy())

    best = evaluate(current())
    history = [Epoch(0, float("nan"), best, time.perf_counter() - started)]
    log(f"epoch 0 (no adaptation): held-out dense nDCG@10 {best:.4f}")
    best_epoch, best_weight = 0, current()
    for epoch in range(1, config.max_epochs + 1):
        order = rng.permutation(len(data))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            pool = whole or _Pool.of(documents, _pool_documents(data, batch))
            loss = _batch_loss(weight, queries, chunks, data, batch, pool, config.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        score = evaluate(current())
        history.append(Epoch(epoch, total / max(len(data), 1), score, time.perf_counter() - started))
        log(f"epoch {epoch}: loss {total / max(len(data), 1):.4f}, held-out dense nDCG@10 {score:.4f}")
        if score > best:
            best, best_epoch, best_weight = score, epoch, current()
        elif epoch - best_epoch >= config.patience:
            break
    return TrainResult(best_weight, best_epoch, best, history, time.perf_counter() - started)


@dataclass(frozen=True)
class _Pool:
    """The documents a batch is scored against: their positions, their chunk rows, and which of
    them each row belongs to."""

    documents: np.ndarray
    rows: np.ndarray
    owner: np.ndarray
    every_row: bool = False

    @classmethod
    def of(cls, vectors: DocumentVectors, documents: np.ndarray) -> _Pool:
        rows, owner = vectors.chunks_of(documents)
        return cls(documents, rows, owner, every_row=len(rows) == vectors.chunk_count)

    def local(self, position: int) -> int:
        """The column of document ``position`` in the batch's scores, or -1."""
        j = int(np.searchsorted(self.documents, position))
        return j if j < len(self.documents) and self.documents[j] == position else -1


def _pool_documents(data: TrainingSet, batch: np.ndarray) -> np.ndarray:
    """The documents a batch is scored against when not every document is: its relevant ones and
    its negatives."""
    parts = [np.fromiter(data.relevant[i].keys(), dtype=np.int64) for i in batch]
    parts += [data.negatives[i] for i in batch]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _batch_loss(
    weight: torch.Tensor,
    queries: torch.Tensor,
    chunks: torch.Tensor,
    data: TrainingSet,
    batch: np.ndarray,
    pool: _Pool,
    temperature: float,
) -> torch.Tensor:
    """Grade-weighted InfoNCE of the batch's relevant documents against the pool's other documents."""
    import torch

    q = queries[torch.from_numpy(batch)]
    x = q + q @ weight.T
    adapted = x * (q.norm(dim=1, keepdim=True) / x.norm(dim=1, keepdim=True).clamp_min(1e-12))
    rows = chunks if pool.every_row else chunks[torch.from_numpy(pool.rows)]
    chunk_scores = adapted @ rows.T
    # a document's score is its best chunk's, as in medpg's dense retrieval
    scores = torch.full((len(batch), len(pool.documents)), -1e4).scatter_reduce(
        1, torch.from_numpy(pool.owner).expand(len(batch), -1), chunk_scores, reduce="amax", include_self=True
    )
    scores = scores / temperature
    grades = torch.zeros(len(batch), len(pool.documents))
    for r, i in enumerate(batch):
        for doc, grade in data.relevant[i].items():
            j = int(doc) if pool.every_row else pool.local(int(doc))
            if j >= 0:
                grades[r, j] = float(grade)
    positive = grades > 0
    negatives = torch.logsumexp(scores.masked_fill(positive, -1e4), dim=1, keepdim=True)
    log_p = scores - torch.logaddexp(scores, negatives)
    share = grades / grades.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return -(log_p * share).sum(dim=1).mean()


__all__ = ["DocumentVectors", "Epoch", "TrainConfig", "TrainResult", "TrainingSet", "train_adapter"]
