"""Request and response bodies of the HTTP API (pydantic v2).

Requests refuse unknown fields and carry limits (k 1..100, at most 1,000 documents, the query
at most MEDPG_MAX_QUERY_CHARS), so a bad request is a 422 naming the field. The search
response has the shape of ``SearchResponse.to_dict()``: the same JSON from Python, the CLI's
``--json`` and the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, create_model

from medpg.retrieval.arguments import MAX_CANDIDATES
from medpg.vocabulary import FusionMethod, LexicalScorer, SearchMode

MAX_DOCUMENTS_PER_REQUEST = 1000
MAX_K = 100
MAX_FILTER_VALUES = 1000

Name = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------
# documents


class DocumentIn(_Request):
    """One document as ``medpg ingest`` reads a JSON line; ``documents.validate_documents`` applies
    ingest's rules (sizes, dates, NUL bytes, ids once per batch)."""

    id: str | int = Field(description="The document's id within its source.")
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    patient_id: str | int | None = None
    date: str | None = Field(default=None, description="ISO 8601 date or date-time.")


class UpsertRequest(_Request):
    source: Name
    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS_PER_REQUEST)


class UpsertResponse(BaseModel):
    source: str
    documents: int
    inserted: int
    updated: int
    unchanged: int
    chunks_written: int
    ids: list[str] = Field(description="The documents' ids, in request order.")
    changed_document_ids: list[int] = Field(description="medpg ids of the inserted or changed documents.")
    enqueued_chunks: int | None = Field(
        description="Chunks sent to the embedding workers; null without a broker or when it is down "
        "(the chunks stay pending and reconcile enqueues them)."
    )


class DocumentOut(BaseModel):
    """A stored document in the shape it was sent (``id`` is its id within the source)."""

    id: str
    document_id: int = Field(description="medpg's own id (search results' document_id).")
    source: str
    tenant: str
    title: str
    text: str
    metadata: dict[str, Any]
    patient_id: str | None
    date: datetime | None
    created_at: datetime
    updated_at: datetime
    chunks: int
    embedded_chunks: int = Field(description="Chunks with a current vector of the model search uses.")


# --------------------------------------------------------------------------------------------------
# search


class FiltersIn(_Request):
    """All given conditions must hold; dates are a half-open range ``date_from <= date < date_to``."""

    sources: list[Name] | None = Field(default=None, min_length=1, max_length=MAX_FILTER_VALUES)
    metadata: dict[str, Any] | None = Field(default=None, description="jsonb containment")
    date_from: datetime | None = None
    date_to: datetime | None = None
    patient_ids: list[Name] | None = Field(default=None, min_length=1, max_length=MAX_FILTER_VALUES)


class SearchRequestBase(_Request):
    """Every option of ``medpg.search()``; ``query``'s length limit is set per app (MEDPG_MAX_QUERY_CHARS)."""

    query: str

    k: int = Field(default=10, ge=1, le=MAX_K)
    mode: Literal["hybrid", "dense", "lexical"] | None = None
    lexical: LexicalScorer | None = None
    fusion: FusionMethod | None = None
    rerank: bool | None = Field(default=None, description="null: automatic (when a cross-encoder is here)")
    filters: FiltersIn | None = None
    candidates: int | None = Field(default=None, ge=1, le=MAX_CANDIDATES)
    explain: bool = Field(default=True, description="Include each result's explanation.")
    evidence: bool = Field(default=True, description="Include each result's evidence passage.")


def search_request_model(max_query_chars: int) -> type[SearchRequestBase]:
    """The search request of an app whose queries may be ``max_query_chars`` long."""
    query = Annotated[str, StringConstraints(max_length=max_query_chars)]
    model: type[SearchRequestBase] = create_model(
        "SearchRequest", __base__=SearchRequestBase, query=(query, Field(description="Any text."))
    )
    return model


class EvidenceOut(BaseModel):
    chunk_id: int | None
    char_start: int | None
    char_end: int | None
    text: str


class ExplanationOut(BaseModel):
    dense_rank: int | None
    dense_score: float | None
    lexical_rank: int | None
    lexical_score: float | None
    matched_terms: list[str]
    fused_score: float | None
    first_stage_rank: int
    rerank_score: float | None = None


class SearchResultOut(BaseModel):
    rank: int
    score: float
    document_id: int
    source: str
    external_id: str
    title: str
    evidence: EvidenceOut | None
    explanation: ExplanationOut | None
    metadata: dict[str, Any]
    patient_id: str | None
    # the ISO string of SearchResponse.to_dict() (pydantic would write UTC as "Z"): the same JSON
    document_date: str | None = Field(description="ISO 8601 date-time")


class SearchResponseOut(BaseModel):
    mode: SearchMode
    lexical: LexicalScorer
    fusion: FusionMethod
    reranked: bool
    query_terms: list[str]
    warnings: list[str]
    timings_ms: dict[str, float]
    results: list[SearchResultOut]


# --------------------------------------------------------------------------------------------------
# keys


class KeyOut(BaseModel):
    id: int
    name: str
    tenant: str
    patients: list[str] | None
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character, which PostgreSQL text cannot hold")
    return value


class CreateKeyRequest(_Request):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_nul)]
    patients: list[Name] | None = Field(
        default=None, min_length=1, max_length=MAX_FILTER_VALUES, description="null: every patient"
    )
    scopes: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=20
    )


class CreatedKey(BaseModel):
    key: KeyOut
    token: str = Field(description="Shown once: only its hash is stored.")


__all__ = [
    "MAX_DOCUMENTS_PER_REQUEST",
    "CreateKeyRequest",
    "CreatedKey",
    "DocumentIn",
    "DocumentOut",
    "FiltersIn",
    "KeyOut",
    "SearchRequestBase",
    "SearchResponseOut",
    "SearchResultOut",
    "UpsertRequest",
    "UpsertResponse",
    "search_request_model",
]
