"""API keys on requests: ``Authorization: Bearer <token>`` (or ``X-API-Key: <token>``).

No key, an unknown one or a revoked one is a 401 (``WWW-Authenticate: Bearer``); a valid key
without the permission a route needs is a 403. Neither answer carries data or echoes the token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from medpg import keys
from medpg.errors import AuthenticationError, PermissionDeniedError
from medpg.keys import ApiKey
from medpg.service.middleware import KEY_ID_SCOPE_KEY
from medpg.service.state import ServiceState, get_state


def request_token(request: Request) -> str | None:
    """The token a request carries, or None; another Authorization scheme is a 401."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <API key>'")
        return token.strip()
    api_key = request.headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def authenticated(request: Request, state: Annotated[ServiceState, Depends(get_state)]) -> ApiKey:
    """The request's valid API key (401 otherwise); its id goes into the access log."""
    key = keys.authenticate(state.db, request_token(request))
    request.scope[KEY_ID_SCOPE_KEY] = key.id
    return key


def requires(*permissions: str) -> Callable[..., ApiKey]:
    """A dependency: the request's key, which must hold one of ``permissions`` (403 otherwise)."""

    def dependency(key: Annotated[ApiKey, Depends(authenticated)]) -> ApiKey:
        if len(permissions) == 1:
            keys.require(key, permissions[0])
        elif not any(key.allows(p) for p in permissions):
            raise PermissionDeniedError(f"this API key lacks the permission ({' or '.join(permissions)})")
        return key

    return dependency


__all__ = ["authenticated", "request_token", "requires"]
