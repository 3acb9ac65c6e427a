"""Typed search requests and results (frozen dataclasses; ``to_dict`` gives JSON-ready values)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from medpg.errors import InputError
from medpg.retrieval import arguments
from medpg.vocabulary import FusionMethod, LexicalScorer, SearchMode

_FILTER_NAMES = ("sources", "metadata", "date_from", "date_to", "patient_ids")
_ALIASES = {"source": "sources", "patient_id": "patient_ids"}


@dataclass(frozen=True)
class Filters:
    """Restrict every retrieval path; all given conditions must hold.

    ``metadata`` is jsonb containment (``{"specialty": "Cardiology"}`` matches documents whose
    metadata includes that pair); dates are a half-open range ``date_from <= date < date_to``
    (documents without a date are excluded when either bound is set; a date without a time zone
    is UTC). Every value is checked when a Filters is made (``medpg.retrieval.arguments``): a bad
    one is an InputError naming the filter and never quoting the value (patient ids are PHI).
    """

    sources: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    patient_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        checked = {
            "sources": arguments.strings(self.sources, "sources"),
            "metadata": arguments.metadata(self.metadata),
            "date_from": arguments.timestamp(self.date_from, "date_from"),
            "date_to": arguments.timestamp(self.date_to, "date_to"),
            "patient_ids": arguments.strings(self.patient_ids, "patient_ids"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def coerce(cls, value: Filters | Mapping[str, Any] | None) -> Filters:
        """Accept a Filters, a dict with the same keys (dates as datetime or ISO strings), or None."""
        if value is None:
            return cls()
        if isinstance(value, Filters):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"filters must be a mapping, got {type(value).__name__}")
        unknown = [key for key in value if key not in _FILTER_NAMES and key not in _ALIASES]
        if unknown:
            names = ", ".join(sorted(ascii(key)[:40] for key in unknown))
            raise InputError(f"unknown filter(s) {names}; known: {', '.join(_FILTER_NAMES)}")
        given: dict[str, Any] = {}
        for key, item in value.items():
            name = _ALIASES.get(key, key)
            if name in given:
                raise InputError(f"filter {name!r} is given twice (as {name} and {key})")
            given[name] = item
        return cls(**given)

    @property
    def active(self) -> bool:
        return any(
            v is not None
            for v in (self.sources, self.metadata, self.date_from, self.date_to, self.patient_ids)
        )


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
