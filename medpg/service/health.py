"""``/health`` and ``/metrics``: no API key needed, and neither shows data.

/health reports the database, the broker and the models separately: 200 ``ok`` when all are
well, 200 ``degraded`` when the database is fine but the broker is down or a model is missing
(lexical search and ingest still work), 503 ``error`` when the database is unreachable or its
schema is not current. /metrics is Prometheus text; it is not behind a key so a scraper needs
no secret, and it holds counts and route templates only (bind the service to a private network
or put /metrics behind the proxy's rules to keep it in).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from medpg.service.state import ServiceState, get_state

router = APIRouter()

# "not_warmed": the app was made without warming (loaded on first use)
_MODEL_FINE = {"ok", "not_configured", "not_warmed"}


@router.get("/health", tags=["health"])
def health(state: Annotated[ServiceState, Depends(get_state)]) -> JSONResponse:
    """Database, broker and models, each on its own; 503 only when the database cannot serve."""
    database = state.database_health()
    broker = state.broker_health()
    models: dict[str, Any] = state.models
    if database["status"] != "ok":
        overall, code = "error", 503
    elif broker["status"] == "error" or any(m.get("status") not in _MODEL_FINE for m in models.values()):
        overall, code = "degraded", 200
    else:
        overall, code = "ok", 200
    body = {"status": overall, "database": database, "broker": broker, "models": models}
    return JSONResponse(body, status_code=code)


@router.get("/metrics", tags=["health"])
def metrics(state: Annotated[ServiceState, Depends(get_state)]) -> Response:
    """Prometheus metrics: requests and latency per route template and status, embedding backlog."""
    content, media_type = state.metrics.render()
    return Response(content, media_type=media_type)


__all__ = ["router"]
