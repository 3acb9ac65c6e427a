"""Pure ASGI middleware: request context (access log, metrics, request id, last-resort 500) and
the request body size limit.

The access log has one line per request: method, route template, status, duration, key id and
request id; never the raw path, the query string, a body or document text (uvicorn's own access
log, which prints the raw path and query string, is turned off by ``medpg serve``).
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medpg.errors import (
    DatabaseUnavailableError,
    InputError,
    MedpgError,
    PayloadTooLargeError,
    is_transient,
)
from medpg.service.errors import internal_error_response, medpg_error_response
from medpg.service.metrics import Metrics

access_log = logging.getLogger("medpg.service.access")
log = logging.getLogger("medpg.service")

REQUEST_ID_HEADER = "x-request-id"
# A client's request id is kept only when it looks like an id (it is logged and echoed).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Scope key where the auth dependency leaves the id of the request's API key (for the log).
KEY_ID_SCOPE_KEY = "medpg.key_id"
UNMATCHED_ROUTE = "(unmatched)"


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/documents/{source}/{external_id}``), never the raw path.

    The router leaves the route in the scope; a request answered before routing (a body over the
    limit) is matched against the app's routes here.
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                route = candidate
                break
    if route is None:
        return UNMATCHED_ROUTE
    return str(getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED_ROUTE))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    """Request id, access log line and metrics for every HTTP request; a generic 500 for an
    unexpected exception (its class and stack frames logged, never its message: a driver's
    message can quote a row)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - the last resort: a generic answer, the class logged
            route = route_template(scope)
            if is_transient(exc):
                # the database went away mid-request (the driver's error, not a MedpgError)
                log.warning("%s %s: %s (database unavailable)", scope["method"], route, type(exc).__name__)
                response = medpg_error_response(
                    scope["path"], DatabaseUnavailableError("the database is unavailable; try again later")
                )
            else:
                frames = "".join(traceback.format_tb(exc.__traceback__))
                log.error("%s %s: unhandled %s\n%s", scope["method"], route, type(exc).__name__, frames)
                response = internal_error_response(scope["path"])
            if not response_started:
                await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            self.metrics.observe(scope["method"], route, status, seconds)
            access_log.info(
                "%s %s %d %.1fms key=%s request_id=%s",
                scope["method"],
                route,
                status,
                seconds * 1000,
                scope.get(KEY_ID_SCOPE_KEY, "-"),
                request_id,
            )


class _BodyTooLarge(Exception):
    """Raised from ``receive`` to stop the app reading a body over the limit."""


class BodySizeLimitMiddleware:
    """413 ``PayloadTooLargeError`` for a body over ``max_bytes``: by Content-Length before the
    app runs, and by counting the bytes of a streamed (chunked) body as the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the request body is larger than {self.max_bytes:,} bytes (MEDPG_API_MAX_BODY_BYTES); "
            "send fewer documents per request"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            error: MedpgError | None = None
            if not declared.strip().isdigit():
                error = InputError("the Content-Length header is not a number")
            elif int(declared) > self.max_bytes:
                error = self._error()
            if error is not None:
                await medpg_error_response(scope["path"], error)(scope, receive, send)
                return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def send_unless_exceeded(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                # The app answered the aborted read (FastAPI turns it into a 400); the answer is 413.
                if not response_started:
                    response_started = True
                    await medpg_error_response(scope["path"], self._error())(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_unless_exceeded)
        except _BodyTooLarge:
            if not response_started:
                await medpg_error_response(scope["path"], self._error())(scope, receive, send)
        except Exception:
            if not exceeded:
                raise
            if not response_started:
                await medpg_error_response(scope["path"], self._error())(scope, receive, send)


__all__ = [
    "KEY_ID_SCOPE_KEY",
    "BodySizeLimitMiddleware",
    "RequestContextMiddleware",
    "route_template",
]
