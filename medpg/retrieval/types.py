"""Typed search requests and results (frozen dataclasses; ``to_dict`` gives JSON-ready values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from medpg.errors import InputError
from medpg.vocabulary import FusionMethod, LexicalScorer, SearchMode


@dataclass(frozen=True)
class Filters:
    """Restrict every retrieval path; all given conditions must hold.

    ``metadata`` is jsonb containment (``{"specialty": "Cardiology"}`` matches documents whose
    metadata includes that pair); dates are a half-open range ``date_from <= date < date_to``
    (documents without a date are excluded when either bound is set).
    """

    sources: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    patient_ids: tuple[str, ...] | None = None

    @classmethod
    def coerce(cls, value: Filters | Mapping[str, Any] | None) -> Filters:
        """Accept a Filters, a dict with the same keys (dates as datetime or ISO strings), or None."""
        if value is None:
            return cls()
        if isinstance(value, Filters):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"filters must be a mapping, got {type(value).__name__}")
        unknown = set(value) - {
            "sources",
            "source",
            "metadata",
            "date_from",
            "date_to",
            "patient_ids",
            "patient_id",
        }
        if unknown:
            raise InputError(
                f"unknown filter(s) {', '.join(sorted(unknown))}; "
                "known: sources, metadata, date_from, date_to, patient_ids"
            )
        metadata = value.get("metadata")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InputError("filter 'metadata' must be an object (jsonb containment)")
        return cls(
            sources=_strings(value.get("sources", value.get("source")), "sources"),
            metadata=dict(metadata) if metadata is not None else None,
            date_from=_date(value.get("date_from"), "date_from"),
            date_to=_date(value.get("date_to"), "date_to"),
            patient_ids=_strings(value.get("patient_ids", value.get("patient_id")), "patient_ids"),
        )

    @property
    def active(self) -> bool:
        return any(
            v is not None
            for v in (self.sources, self.metadata, self.date_from, self.date_to, self.patient_ids)
        )


def _strings(value: object, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InputError(f"filter {name!r} must be a string or a list of strings")


def _date(value: object, name: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InputError(f"filter {name!r} is not an ISO 8601 date: {value[:40]!r}") from None
    raise InputError(f"filter {name!r} must be a datetime or an ISO 8601 string")


@dataclass(frozen=True)
class Evidence:
    """The passage that best supports the document (its best chunk) and where it sits in the body."""

    chunk_id: int | None
    char_start: int | None
    char_end: int | None
    text: str


@dataclass(frozen=True)
class Explanation:
    """Why a document is where it is: each list's rank and score, the fusion, the rerank.

    A rank is None when that list did not rank the document among its candidates; its score can
    still be known (each retriever scores the other's candidates).
    """

    dense_rank: int | None
    dense_score: float | None
    lexical_rank: int | None
    lexical_score: float | None
    matched_terms: tuple[str, ...]
    fused_score: float | None
    first_stage_rank: int
    rerank_score: float | None = None


@dataclass(frozen=True)
class SearchResult:
    """One ranked document: its final score, identity, evidence passage and explanation."""

    rank: int
    score: float
    document_id: int
    source: str
    external_id: str
    title: str
    evidence: Evidence
    explanation: Explanation
    metadata: dict[str, Any] = field(default_factory=dict)
    patient_id: str | None = None
    document_date: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["explanation"]["matched_terms"] = list(self.explanation.matched_terms)
        out["document_date"] = self.document_date.isoformat() if self.document_date else None
        return out


@dataclass(frozen=True)
class SearchResponse:
    """Results best first, what was run, and warnings (e.g. no current embeddings: dense skipped)."""

    results: list[SearchResult]
    mode: SearchMode
    lexical: LexicalScorer
    fusion: FusionMethod
    reranked: bool
    query_terms: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "lexical": self.lexical,
            "fusion": self.fusion,
            "reranked": self.reranked,
            "query_terms": list(self.query_terms),
            "warnings": list(self.warnings),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "results": [r.to_dict() for r in self.results],
        }


__all__ = [
    "Evidence",
    "Explanation",
    "Filters",
    "SearchResponse",
    "SearchResult",
]
