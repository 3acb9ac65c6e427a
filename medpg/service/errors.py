"""Errors as HTTP responses: one JSON shape everywhere, never the submitted values.

Every error is ``{"error": {"type": <class name>, "message": ..., "status": N}}``; a validation
error adds ``fields`` (where and what, never the value). Under ``/fhir`` the same errors are
FHIR OperationOutcome resources (``medpg.service.fhir_routes``). FastAPI's own validation
handler echoes the submitted ``input`` (which may be document text): it is replaced here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medpg.errors import MedpgError

log = logging.getLogger("medpg.service")

FHIR_PREFIX = "/fhir"
MAX_FIELDS_LISTED = 20
_PART_CHARS = 64


def is_fhir_path(path: str) -> bool:
    return path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")


def error_body(type_name: str, message: str, status: int, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"type": type_name, "message": message, "status": status, **extra}}


def error_response(
    path: str,
    status: int,
    type_name: str,
    message: str,
    *,
    fields: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    exc: MedpgError | None = None,
) -> Response:
    """A JSON error, or an OperationOutcome for a FHIR route (a 401 with ``WWW-Authenticate: Bearer``)."""
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    if is_fhir_path(path):
        from medpg.service.fhir_routes import outcome_response

        return outcome_response(status, message, fields=fields, headers=headers, exc=exc)
    extra = {"fields": list(fields)} if fields else {}
    return JSONResponse(error_body(type_name, message, status, **extra), status_code=status, headers=headers)


def medpg_error_response(path: str, exc: MedpgError) -> Response:
    """A MedpgError at its ``http_status``."""
    return error_response(path, exc.http_status, type(exc).__name__, str(exc), exc=exc)


def internal_error_response(path: str) -> Response:
    """The 500 answer: a generic message (the log has the exception's class)."""
    return error_response(
        path, 500, "InternalServerError", "internal error; the server log has the details (no request data)"
    )


def _part(value: object) -> str:
    text = ascii(value)[1:-1] if isinstance(value, str) else str(value)
    return text if len(text) <= _PART_CHARS else text[: _PART_CHARS - 3] + "..."


def field_name(loc: Sequence[object]) -> str:
    """``("body", "documents", 3, "text")`` -> ``documents[3].text``; a query or path parameter
    keeps its kind: ``query._count``."""
    parts = list(loc)
    where = parts.pop(0) if parts and parts[0] in ("body", "query", "path", "header", "cookie") else None
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += ("." if name else "") + _part(part)
    if where in (None, "body"):
        return name or "body"
    return f"{where}.{name}" if name else str(where)


def validation_fields(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Where each validation error is and what is wrong: never the submitted value (``input``)."""
    fields = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        fields.append(
            {
                "field": field_name(loc),
                "location": [_part(p) if isinstance(p, str) else p for p in loc],
                "type": str(err.get("type", "")),
                "message": str(err.get("msg", "")),
            }
        )
    return fields


def validation_message(fields: Sequence[dict[str, Any]]) -> str:
    listed = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:MAX_FIELDS_LISTED])
    more = len(fields) - MAX_FIELDS_LISTED
    return "invalid request: " + listed + (f"; and {more} more" if more > 0 else "")


def install_error_handlers(app: FastAPI) -> None:
    """MedpgError, request validation and HTTP errors (404, 405) as the one error shape."""

    async def on_medpg_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MedpgError)
        if exc.http_status >= 500:
            log.warning("%s %s: %s", request.method, _route(request), type(exc).__name__)
        return medpg_error_response(request.url.path, exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields = validation_fields(exc)
        return error_response(
            request.url.path, 422, "RequestValidationError", validation_message(fields), fields=fields
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(request.url.path, exc.status_code, "HTTPException", message, headers=headers)

    app.add_exception_handler(MedpgError, on_medpg_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path_format", None) or getattr(route, "path", None) or "(unmatched)")


__all__ = [
    "error_body",
    "error_response",
    "field_name",
    "install_error_handlers",
    "internal_error_response",
    "is_fhir_path",
    "medpg_error_response",
    "validation_fields",
]
