"""What the embedding steps pass between them and report: ids, hashes, counts — never text in results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClaimedChunk:
    """A chunk this process holds a lease on: what the article encoder reads, and the hash of it."""

    id: int
    title: str
    text: str
    content_hash: bytes


@dataclass
class BatchResult:
    """What one claim → encode → write round did (ids only: results never carry text)."""

    claimed: int = 0
    written: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)  # text changed while encoding: not written
    failed: list[tuple[int, int, str]] = field(default_factory=list)  # (id, attempts, error)
    retry: list[tuple[int, int]] = field(default_factory=list)  # failed, attempts left: (id, attempts)
    lost: list[int] = field(default_factory=list)  # lease taken over by another worker

    def merge(self, other: BatchResult) -> None:
        self.claimed += other.claimed
        self.written += other.written
        self.stale += other.stale
        self.failed += other.failed
        self.retry += other.retry
        self.lost += other.lost


@dataclass
class EmbedReport:
    """Totals of a backfill (``Embedder.embed_pending``)."""

    written: int = 0
    failed: int = 0
    stale: int = 0
    rechunked: int = 0  # documents chunked again first (changed by plain SQL)
    seconds: float = 0.0
    switched_model: str | None = None

    @property
    def chunks_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ReconcileReport:
    """What a reconcile pass found and did."""

    enqueued: int = 0
    skipped: bool = False  # another reconcile was running
    switched_model: str | None = None


def batched(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    """``ids`` in lists of at most ``size`` (the unit of one task message)."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])
