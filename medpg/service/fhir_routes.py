"""FHIR R4 DocumentReference routes (placeholder until medpg.service.fhir lands)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"

_ISSUE_CODES = {
    401: "login",
    403: "forbidden",
    404: "not-found",
    409: "conflict",
    413: "too-costly",
    422: "invalid",
}


def outcome_response(
    status: int,
    message: str,
    *,
    fields: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error under /fhir as an OperationOutcome."""
    code = _ISSUE_CODES.get(
        status, "transient" if status == 503 else "exception" if status >= 500 else "processing"
    )
    issues: list[dict[str, Any]] = [{"severity": "error", "code": code, "diagnostics": message}]
    body = {"resourceType": "OperationOutcome", "issue": issues}
    return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def router(max_query_chars: int) -> APIRouter:
    return APIRouter(prefix="/fhir")
