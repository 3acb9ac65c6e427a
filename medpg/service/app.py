"""The medpg HTTP API: ``create_app(settings)`` builds one FastAPI application.

One app holds one ``Database`` (one connection pool) and its own metrics registry. At start-up
(the lifespan handler) it follows the model that made the database's vectors when none was
chosen, as the CLI does, and warms the query encoder and the cross-encoder so the first search
does not wait for them; a model that fails to load is reported by /health, it does not stop the
service (lexical search needs no model).

Middleware, outermost first: request context (request id, access log, metrics, a generic 500),
then the body size limit. Routes: ``medpg.service.health`` (/health, /metrics),
``medpg.service.routes`` (documents, search, status, admin keys),
``medpg.service.feedback_routes`` (feedback for ``medpg learn``) and
``medpg.service.fhir_routes`` (FHIR R4 DocumentReference).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from medpg.config import Settings, get_settings
from medpg.db.engine import Database
from medpg.service import feedback_routes, fhir_routes, health
from medpg.service.errors import install_error_handlers
from medpg.service.metrics import Metrics
from medpg.service.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from medpg.service.routes import api_router
from medpg.service.state import ServiceState

log = logging.getLogger("medpg.service")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medpg")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without installing
        return "0"


def start(state: ServiceState, *, warm_models: bool) -> None:
    """Start-up work (in a thread): settings that follow the stored model, the broker, the models."""
    state.follow_stored_model()
    if state.settings.broker_url:
        from workers.tasks import configure_from

        configure_from(state.settings)
    if warm_models:
        state.warm_models()
    log.info("medpg service ready: %s", state.db.describe())


def create_app(settings: Settings | None = None, *, warm_models: bool = True) -> FastAPI:
    """The API for ``settings`` (default: ``get_settings()``).

    ``warm_models=False`` skips loading the encoders at start-up (they load on first use); tests
    of routes that never encode use it.
    """
    settings = settings or get_settings()
    db = Database(settings)
    state = ServiceState(db=db, metrics=Metrics(db, settings.embed_max_attempts))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(lambda: start(state, warm_models=warm_models))
        try:
            yield
        finally:
            db.dispose()

    app = FastAPI(
        title="medpg",
        version=_version(),
        summary="Hybrid search for medical text in PostgreSQL: dense + BM25, fused, reranked, explained.",
        lifespan=lifespan,
    )
    app.state.medpg = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(api_router(settings.max_query_chars))
    app.include_router(feedback_routes.router(settings.max_query_chars))
    app.include_router(fhir_routes.router())
    # add_middleware puts each new one outside the ones before it
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    return app


__all__ = ["create_app"]
