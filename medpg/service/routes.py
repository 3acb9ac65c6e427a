"""The JSON API: documents, search, status and the tenant's API keys.

Handlers are plain ``def``: FastAPI runs them in its thread pool, so a search that encodes a
query or waits on PostgreSQL never blocks the event loop. Each one authenticates the key,
checks its permission, and calls the core with the key's scope (row-level security does the
filtering) and, for reads and searches, an audit context (the audit row commits with the read).
"""

# No ``from __future__ import annotations``: the search route's body model is made per app, and
# FastAPI reads a handler's annotations as objects.

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from starlette.convertors import PathConvertor, register_url_convertor

import medpg
from medpg import audit, documents, keys
from medpg.audit import AuditContext
from medpg.errors import PermissionDeniedError
from medpg.keys import ApiKey
from medpg.retrieval.types import Filters
from medpg.service.auth import requires
from medpg.service.schemas import (
    CreatedKey,
    CreateKeyRequest,
    DocumentOut,
    KeyOut,
    SearchRequestBase,
    SearchResponseOut,
    UpsertRequest,
    UpsertResponse,
    search_request_model,
)
from medpg.service.state import ServiceState, get_state

log = logging.getLogger("medpg.service")

MAX_BIGINT = 2**63 - 1

State = Annotated[ServiceState, Depends(get_state)]


class _AnyPathConvertor(PathConvertor):
    """Starlette's ``path`` convertor, newlines included: its ``.*`` stops at a newline, and the
    route's ``$`` also matches before a final one, so ``/documents/s/x%0A`` would read document
    ``x``, and a document whose id holds a newline could be neither read nor deleted."""

    regex = "(?s:.*)"


register_url_convertor("any_path", _AnyPathConvertor())


def audit_context(state: ServiceState, key: ApiKey, route: str) -> AuditContext:
    """The audit row's who and where for one request (route: the template, never the raw path)."""
    return AuditContext(
        key_id=key.id, tenant=key.tenant, route=route, hash_key=audit.hash_key(state.db, state.settings)
    )


def document_out(doc: documents.StoredDocument) -> dict[str, Any]:
    """``StoredDocument.as_dict()`` (the shape a document is sent in) with medpg's own id."""
    return {**doc.as_dict(), "document_id": doc.id}


def enqueue_embedding(state: ServiceState, document_ids: list[int]) -> int | None:
    """Send the chunks of changed documents to the workers; None without a broker or when it is
    down (the chunks are pending in PostgreSQL: reconcile enqueues them later).

    A broker found down is not tried again for a few seconds (``ServiceState.broker_health``),
    so a dead broker does not add its connection timeout to every write.
    """
    if not state.settings.broker_url or not document_ids:
        return None
    if state.broker_health()["status"] == "error":
        return None
    from workers.tasks import BROKER_ERRORS, enqueue_documents

    try:
        return enqueue_documents(state.db, state.settings, document_ids)
    except BROKER_ERRORS as exc:
        state.broker_failed(type(exc).__name__)
        log.warning(
            "could not reach the broker (%s); %d documents are saved and their chunks will be enqueued by "
            "reconcile",
            type(exc).__name__,
            len(document_ids),
        )
        return None


def check_patient_filter(key: ApiKey, patient_ids: list[str] | None) -> None:
    """403 when a key bound to patients filters on a patient outside them (never naming the ids)."""
    if key.patients is None or not patient_ids:
        return
    outside = [p for p in patient_ids if not key.scope.allows_patient(p)]
    if outside:
        raise PermissionDeniedError(
            f"this API key is bound to {len(key.patients)} patient(s) and the patient_ids filter names "
            f"{len(outside)} outside them; row-level security would return none of their documents"
        )


def search_payload(response: medpg.SearchResponse, *, explain: bool, evidence: bool) -> dict[str, Any]:
    """``SearchResponse.to_dict()``, explanations or evidence passages left out when not asked for."""
    out = response.to_dict()
    for result in out["results"]:
        if not explain:
            result["explanation"] = None
        if not evidence:
            result["evidence"] = None
    return out


def api_router(max_query_chars: int) -> APIRouter:
    """The routes of one app (its search body allows ``max_query_chars``)."""
    router = APIRouter()
    search_body = search_request_model(max_query_chars)

    @router.post("/documents", response_model=UpsertResponse, tags=["documents"])
    def upsert_documents(
        body: UpsertRequest, state: State, key: Annotated[ApiKey, Depends(requires("write"))]
    ) -> dict[str, Any]:
        """Validate every document (ingest's rules), then upsert them in one transaction.

        A bad document is a 422 naming ``documents[i].field``, and nothing is written. Unchanged
        documents are not touched. The changed documents' chunks are sent to the embedding
        workers when a broker is configured.
        """
        rows = [d.model_dump(exclude_none=True) for d in body.documents]
        records = documents.validate_documents(state.settings, body.source, rows)
        result = documents.upsert_documents(
            state.db, state.settings, source=body.source, records=records, scope=key.scope
        )
        return {
            "source": body.source,
            "documents": len(records),
            "inserted": result.inserted,
            "updated": result.updated,
            "unchanged": result.unchanged,
            "chunks_written": result.chunks_written,
            "ids": [r.external_id for r in records],
            "changed_document_ids": list(result.changed_ids),
            "enqueued_chunks": enqueue_embedding(state, list(result.changed_ids)),
        }

    @router.get("/documents/{source}/{external_id:any_path}", response_model=DocumentOut, tags=["documents"])
    def get_document(
        source: str, external_id: str, state: State, key: Annotated[ApiKey, Depends(requires("read"))]
    ) -> dict[str, Any]:
        """One document with its text and embedding progress (audited)."""
        doc = documents.get_document(
            state.db,
            source=source,
            external_id=external_id,
            scope=key.scope,
            audit=audit_context(state, key, "/documents/{source}/{external_id}"),
        )
        return document_out(doc)

    @router.delete("/documents/{source}/{external_id:any_path}", status_code=204, tags=["documents"])
    def delete_document(
        source: str, external_id: str, state: State, key: Annotated[ApiKey, Depends(requires("delete"))]
    ) -> Response:
        """Delete a document and its chunks (404 when the key's scope holds no such document)."""
        documents.delete_document(state.db, source=source, external_id=external_id, scope=key.scope)
        return Response(status_code=204)

    @router.post("/search", response_model=SearchResponseOut, tags=["search"])
    def search(
        body: search_body,  # type: ignore[valid-type]
        state: State,
        key: Annotated[ApiKey, Depends(requires("search"))],
    ) -> dict[str, Any]:
        """Hybrid search within the key's scope: results best first, explained, with evidence (audited)."""
        request: SearchRequestBase = body
        filters = request.filters.model_dump(exclude_none=True) if request.filters else None
        check_patient_filter(key, filters.get("patient_ids") if filters else None)
        response = medpg.search(
            request.query,
            k=request.k,
            mode=request.mode,
            lexical=request.lexical,
            fusion=request.fusion,
            rerank=request.rerank,
            filters=Filters.coerce(filters),
            db=state.db,
            settings=state.settings,
            candidates=request.candidates,
            scope=key.scope,
            audit=audit_context(state, key, "/search"),
        )
        return search_payload(response, explain=request.explain, evidence=request.evidence)

    @router.get("/status", tags=["status"])
    def status(state: State, key: Annotated[ApiKey, Depends(requires("search", "admin"))]) -> dict[str, Any]:
        """Documents and chunks per embedding state within the key's scope."""
        return documents.embedding_status(state.db, scope=key.scope)

    @router.get("/admin/keys", response_model=list[KeyOut], tags=["admin"])
    def list_keys(
        state: State,
        key: Annotated[ApiKey, Depends(requires("admin"))],
        include_revoked: Annotated[bool, Query()] = False,
    ) -> list[dict[str, Any]]:
        """The API keys of the admin key's tenant (never their tokens)."""
        return [
            k.as_dict() for k in keys.list_keys(state.db, tenant=key.tenant, include_revoked=include_revoked)
        ]

    @router.post("/admin/keys", response_model=CreatedKey, status_code=201, tags=["admin"])
    def create_key(
        body: CreateKeyRequest, state: State, key: Annotated[ApiKey, Depends(requires("admin"))]
    ) -> dict[str, Any]:
        """A new key in the admin key's tenant; its token is in this response only."""
        created, token = keys.create_key(
            state.db, name=body.name, tenant=key.tenant, patients=body.patients, scopes=body.scopes
        )
        return {"key": created.as_dict(), "token": token}

    @router.delete("/admin/keys/{key_id}", response_model=KeyOut, tags=["admin"])
    def revoke_key(
        key_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)],
        state: State,
        key: Annotated[ApiKey, Depends(requires("admin"))],
    ) -> dict[str, Any]:
        """Revoke a key of the admin key's tenant at once (it stays listed, for the audit log)."""
        return keys.revoke_key(state.db, key_id, tenant=key.tenant).as_dict()

    return router


__all__ = ["api_router", "audit_context", "document_out", "enqueue_embedding", "search_payload"]
