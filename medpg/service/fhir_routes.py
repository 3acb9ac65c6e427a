"""FHIR R4B DocumentReference over HTTP: create/update, read, search (``/fhir/...``).

The conversions are ``medpg.service.fhir`` (pure Python); these routes add the key, its scope
and the audit trail, and answer ``application/fhir+json``. Every error under /fhir is an
OperationOutcome (``outcome_response``; ``medpg.service.errors`` sends FHIR paths here).

- ``POST /fhir/DocumentReference``: one resource, or a batch/transaction/collection Bundle of
  them; validated completely before anything is written (422 OperationOutcome naming each bad
  element), stored under source ``fhir`` with the resource id as external id (an upsert).
- ``GET /fhir/DocumentReference/{id}``: the resource with its text as a base64 attachment (audited).
- ``GET /fhir/DocumentReference?patient=&category=&type=&date=&status=&_id=&_text=&_count=``: a
  searchset Bundle; with ``_text`` ranked by ``medpg.search()`` (scores and explanations in each
  entry), without it the matching documents newest first (audited).
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations as objects.

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse

import medpg
from medpg import documents
from medpg.errors import MedpgError
from medpg.keys import ApiKey
from medpg.retrieval.arguments import MAX_K
from medpg.service import fhir
from medpg.service.auth import requires
from medpg.service.routes import audit_context, check_patient_filter, enqueue_embedding
from medpg.service.state import ServiceState, get_state

FHIR_JSON = "application/fhir+json"

State = Annotated[ServiceState, Depends(get_state)]

# OperationOutcome issue codes of errors that are not MedpgErrors (routing, 500s).
_STATUS_CODES = {
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    413: "too-long",
    422: "invalid",
    503: "transient",
}

#: How many more results a search fetches when some condition is checked after SQL (see FhirSearch).
POST_FILTER_FACTOR = 10


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def outcome_response(
    status: int,
    message: str,
    *,
    fields: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    exc: MedpgError | None = None,
) -> JSONResponse:
    """An error under /fhir as an OperationOutcome (``fields``: request validation, one issue each)."""
    if exc is not None:
        body = fhir.outcome_for_error(exc)
    elif fields:
        body = fhir.operation_outcome(
            [fhir.FhirIssue(str(f["field"]), str(f["message"]), code="invalid") for f in fields]
        )
    else:
        code = _STATUS_CODES.get(status, "exception" if status >= 500 else "processing")
        body = fhir.operation_outcome(fhir.FhirIssue(None, message, code=code))
    return fhir_response(body, status, headers)


def base_url(request: Request) -> str:
    """This server's FHIR base, e.g. ``http://127.0.0.1:8750/fhir``."""
    return str(request.base_url).rstrip("/") + "/fhir"


def _query_params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, []).append(value)
    return params


def _response_bundle(
    payload: dict[str, Any], stored: list[fhir.FhirDocument], all_new: bool
) -> dict[str, Any]:
    """A batch-response (or transaction-response) Bundle: each entry's status and location."""
    kind = "transaction-response" if payload.get("type") == "transaction" else "batch-response"
    status = "201 Created" if all_new else "200 OK"
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"response": {"status": status, "location": f"DocumentReference/{doc.id}"}} for doc in stored
        ],
    }


def router() -> APIRouter:
    """The /fhir routes."""
    api = APIRouter(prefix="/fhir", tags=["fhir"])

    @api.post("/DocumentReference", status_code=201, response_class=JSONResponse)
    def create_document_references(
        request: Request,
        payload: Annotated[dict[str, Any], Body(media_type=FHIR_JSON)],
        state: State,
        key: Annotated[ApiKey, Depends(requires("write"))],
    ) -> JSONResponse:
        """Store a DocumentReference, or a Bundle of them (upserts by resource id); 201 with their ids."""
        stored = fhir.parse_payload(payload)
        records = documents.validate_documents(state.settings, fhir.SOURCE, [d.to_row() for d in stored])
        result = documents.upsert_documents(
            state.db, state.settings, source=fhir.SOURCE, records=records, scope=key.scope
        )
        enqueue_embedding(state, list(result.changed_ids))
        if payload.get("resourceType") == "Bundle":
            return fhir_response(_response_bundle(payload, stored, result.inserted == len(stored)), 201)
        doc = stored[0]
        resource = fhir.document_reference(
            doc.metadata,
            id=doc.id,
            text=None,
            title=doc.title,
            patient_id=doc.patient_id,
            date=doc.date,
            base_url=base_url(request),
        )
        return fhir_response(resource, 201, {"Location": fhir.resource_url(base_url(request), doc.id)})

    @api.get("/DocumentReference/{resource_id}", response_class=JSONResponse)
    def read_document_reference(
        request: Request,
        resource_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")],
        state: State,
        key: Annotated[ApiKey, Depends(requires("read"))],
    ) -> JSONResponse:
        """One DocumentReference with its text (audited); 404 OperationOutcome when the key sees none."""
        doc = documents.get_document(
            state.db,
            source=fhir.SOURCE,
            external_id=resource_id,
            scope=key.scope,
            audit=audit_context(state, key, "/fhir/DocumentReference/{resource_id}"),
        )
        resource = fhir.document_reference(
            doc.metadata,
            id=doc.external_id,
            text=doc.body,
            title=doc.title,
            patient_id=doc.patient_id,
            date=doc.document_date,
            last_updated=doc.updated_at,
            base_url=base_url(request),
        )
        return fhir_response(resource)

    @api.get("/DocumentReference", response_class=JSONResponse)
    def search_document_references(
        request: Request, state: State, key: Annotated[ApiKey, Depends(requires("search"))]
    ) -> JSONResponse:
        """A searchset Bundle: ranked by medpg with ``_text``, newest first without (audited)."""
        search = fhir.search_filters(_query_params(request))
        if search.patients is not None:
            check_patient_filter(key, list(search.patients))
        base, self_url = base_url(request), str(request.url)
        if search.empty:
            return fhir_response(fhir.searchset_bundle([], base_url=base, total=0, self_url=self_url))
        post_filter = search.needs_post_filter or search.ids is not None
        fetch = min(MAX_K, search.count * POST_FILTER_FACTOR) if post_filter else search.count
        route = "/fhir/DocumentReference"
        warnings: tuple[str, ...] = ()
        if search.text is not None:
            response = medpg.search(
                search.text,
                k=fetch,
                filters=search.to_filters(),
                db=state.db,
                settings=state.settings,
                scope=key.scope,
                audit=audit_context(state, key, route),
            )
            entries = [fhir.entry_from_result(r) for r in response.results]
            warnings = response.warnings
        else:
            found = documents.find_documents(
                state.db,
                scope=key.scope,
                filters=search.to_filters(),
                limit=fetch,
                audit=audit_context(state, key, route),
            )
            entries = [
                fhir.SearchsetEntry(
                    id=d.external_id,
                    metadata=d.metadata,
                    patient_id=d.patient_id,
                    date=d.document_date,
                    title=d.title,
                    last_updated=d.updated_at,
                )
                for d in found
            ]
        if post_filter:
            entries = [
                e
                for e in entries
                if search.matches(e.metadata) and (search.ids is None or e.id in search.ids)
            ]
        entries = entries[: search.count]
        total = len(entries) if len(entries) < search.count else None  # a full page: there may be more
        bundle = fhir.searchset_bundle(entries, base_url=base, total=total, self_url=self_url)
        if warnings:
            issues = [fhir.FhirIssue(None, w, code="informational", severity="warning") for w in warnings]
            bundle["entry"].append(
                {"resource": fhir.operation_outcome(issues), "search": {"mode": "outcome"}}
            )
        return fhir_response(bundle)

    return api


__all__ = ["FHIR_JSON", "outcome_response", "router"]
