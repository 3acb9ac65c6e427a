"""``POST /feedback``: record a user's judgment of a search result (scope letter ``s``).

The body names the query, the document (medpg's ``document_id`` from a search result, or
``document: {"source", "id"}``), a grade 0-3 and the kind (``marked``: graded by the user;
``opened``: the user opened the result). A bad body is a 422 naming the field; a document the
key cannot see is a 404, and nothing is written. The query text is stored for ``medpg learn
--feedback`` and never logged. ``medpg.learning.feedback`` checks the values again and writes under
the key's scope (row-level security refuses a row about a document outside it).
"""

# No ``from __future__ import annotations``: FastAPI reads the handler's annotations as objects.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)

from medpg.keys import ApiKey
from medpg.learning.feedback import MAX_BIGINT, MAX_GRADE, record_feedback
from medpg.service.auth import requires
from medpg.service.state import ServiceState, get_state

State = Annotated[ServiceState, Depends(get_state)]


def _storable(value: str) -> str:
    """Text PostgreSQL can store as given (the length is the field's own constraint)."""
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    if "\x00" in value:
        raise ValueError("contains a NUL character, which PostgreSQL text cannot hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode)") from None
    return value


Text = Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(_storable)]


class DocumentRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Text
    id: Text | int = Field(description="The document's id within its source.")


class FeedbackRequestBase(BaseModel):
    """A judgment of one document for one query; the query's length limit is set per app."""

    model_config = ConfigDict(extra="forbid")

    query: str
    grade: int = Field(ge=0, le=MAX_GRADE, strict=True, description="0 not relevant ... 3 highly relevant")
    kind: Literal["marked", "opened"] = Field(
        default="marked", description="marked: graded by the user; opened: the user opened the result"
    )
    document_id: int | None = Field(
        default=None, ge=1, le=MAX_BIGINT, strict=True, description="medpg's id (search results' document_id)"
    )
    document: DocumentRef | None = Field(default=None, description="The document by source and id instead.")

    @model_validator(mode="after")
    def _one_document(self) -> "FeedbackRequestBase":
        if (self.document_id is None) == (self.document is None):
            raise ValueError("give the document either as document_id or as document {source, id}")
        return self


def feedback_request_model(max_query_chars: int) -> type[FeedbackRequestBase]:
    """The feedback body of an app whose queries may be ``max_query_chars`` long."""
    query = Annotated[
        str, StringConstraints(min_length=1, max_length=max_query_chars), AfterValidator(_storable)
    ]
    model: type[FeedbackRequestBase] = create_model(
        "FeedbackRequest",
        __base__=FeedbackRequestBase,
        query=(query, Field(description="The query as searched.")),
    )
    return model


class FeedbackOut(BaseModel):
    recorded: bool
    document_id: int
    grade: int
    kind: str


def router(max_query_chars: int) -> APIRouter:
    """The feedback route of one app."""
    api = APIRouter()
    body_model = feedback_request_model(max_query_chars)

    @api.post("/feedback", response_model=FeedbackOut, status_code=201, tags=["feedback"])
    def feedback(
        body: body_model,  # type: ignore[valid-type]
        state: State,
        key: Annotated[ApiKey, Depends(requires("search"))],
    ) -> dict[str, Any]:
        """Record a judgment of a search result for ``medpg learn --feedback`` (404: no such document
        the key can see)."""
        request: FeedbackRequestBase = body
        recorded = record_feedback(
            state.db,
            state.settings,
            query=request.query,
            grade=request.grade,
            kind=request.kind,
            document_id=request.document_id,
            source=request.document.source if request.document else None,
            external_id=request.document.id if request.document else None,
            scope=key.scope,
            key_id=key.id,
        )
        return {
            "recorded": True,
            "document_id": recorded.document_id,
            "grade": recorded.grade,
            "kind": recorded.kind,
        }

    return api


__all__ = ["FeedbackOut", "FeedbackRequestBase", "feedback_request_model", "router"]
