"""What one app holds: its settings, its Database, its metrics, the models it warmed, and the
health checks of the database, the broker and the models (each reported on its own)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import DatabaseError, DatabaseUnavailableError, MedpgError
from medpg.service.metrics import Metrics

log = logging.getLogger("medpg.service")

#: How long a broker check is reused: /health is probed often (the CLI probes it before a search).
BROKER_CHECK_SECONDS = 5.0
BROKER_TIMEOUT_SECONDS = 1.0


@dataclass
class ServiceState:
    """One per app (``app.state.medpg``); handlers reach it through ``get_state``."""

    db: Database
    metrics: Metrics
    models: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            role: {"status": "not_warmed"} for role in ("query_encoder", "cross_encoder")
        }
    )
    _broker: tuple[float, dict[str, Any]] | None = None
    _broker_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> Settings:
        """The settings searches run with: those of the Database (they may follow its stored model)."""
        return self.db.settings

    # --- start-up ---------------------------------------------------------------------------

    def follow_stored_model(self) -> None:
        """Where no model was chosen, use the one that made the database's vectors (as the CLI does).

        A database that cannot be reached now keeps the configured settings (logged): /health says so.
        """
        from medpg.stored_model import model_choice_is_explicit, resolve_settings_for_database, stored_model

        if model_choice_is_explicit(self.db.settings):
            return
        try:
            self.db.settings = resolve_settings_for_database(self.db.settings, stored_model(self.db))
        except MedpgError as exc:
            log.warning("start-up: the stored model was not looked up (%s): %s", type(exc).__name__, exc)

    def warm_models(self) -> None:
        """Load the query encoder (and the cross-encoder when one is configured and present) and
        run each once, so the first search is not the one that waits; a failure is kept for /health."""
        self.models = {"query_encoder": _warm_query_encoder(self.settings)}
        self.models["cross_encoder"] = _warm_cross_encoder(self.settings)

    # --- health ------------------------------------------------------------------------------

    def database_health(self) -> dict[str, Any]:
        """``ok`` with the schema revision, or ``error`` with its kind (the log has the detail)."""
        from medpg import schema

        try:
            state = schema.check(self.db)
        except DatabaseUnavailableError as exc:
            log.warning("health: database unavailable: %s", exc)
            return {"status": "error", "error": type(exc).__name__, "message": "PostgreSQL cannot be reached"}
        except DatabaseError as exc:
            return {"status": "error", "error": type(exc).__name__, "message": str(exc)}
        return {"status": "ok", "revision": state.revision}

    def broker_health(self) -> dict[str, Any]:
        """``not_configured`` without MEDPG_BROKER_URL; else ``ok`` or ``error`` (reused a few seconds)."""
        url = self.settings.broker_url
        if not url:
            return {"status": "not_configured"}
        with self._broker_lock:
            now = time.monotonic()
            if self._broker is not None and now - self._broker[0] < BROKER_CHECK_SECONDS:
                return self._broker[1]
            result = _check_broker(url)
            self._broker = (now, result)
            return result

    def broker_failed(self, error: str) -> None:
        """Publishing failed: report the broker down (and skip enqueueing) for the next few seconds."""
        with self._broker_lock:
            self._broker = (
                time.monotonic(),
                {"status": "error", "error": error, "message": "publishing failed"},
            )


def _warm_query_encoder(settings: Settings) -> dict[str, Any]:
    from medpg.encoders import load_query_encoder
    from medpg.encoders.profiles import resolve_profile

    model = resolve_profile(settings).query_model
    started = time.perf_counter()
    try:
        load_query_encoder(settings).encode_queries(["warm up"])
    except Exception as exc:  # noqa: BLE001 - reported by /health; lexical search still works
        return _model_error(model, exc)
    return {"status": "ok", "model": model, "load_ms": round((time.perf_counter() - started) * 1000, 1)}


def _warm_cross_encoder(settings: Settings) -> dict[str, Any]:
    from medpg.encoders import RerankCandidate, load_cross_encoder, locate_model
    from medpg.encoders.profiles import resolve_profile

    model = resolve_profile(settings).cross_encoder_model
    if model is None or settings.rerank_top_k == 0:
        return {"status": "not_configured"}
    location = locate_model(model)
    if not location.available:
        # search() skips reranking (with a warning) when the model is not on this machine
        return {"status": "missing", "model": model, "message": location.detail or "not on this machine"}
    started = time.perf_counter()
    try:
        cross = load_cross_encoder(settings)
        if cross is not None:
            cross.rerank("warm up", [RerankCandidate(0, "warm up", "warm up")])
    except Exception as exc:  # noqa: BLE001 - reported by /health; search reports it per request
        return _model_error(model, exc)
    return {"status": "ok", "model": model, "load_ms": round((time.perf_counter() - started) * 1000, 1)}


def _model_error(model: str | None, exc: Exception) -> dict[str, Any]:
    log.warning("start-up: %s could not be loaded (%s)", model, type(exc).__name__)
    message = (
        str(exc) if isinstance(exc, MedpgError) else "it could not be loaded; the server log has the class"
    )
    return {"status": "error", "model": model, "error": type(exc).__name__, "message": message}


def _check_broker(url: str) -> dict[str, Any]:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS
            )
    except Exception as exc:  # noqa: BLE001 - any failure to connect is "broker down"
        log.warning("health: broker unavailable (%s)", type(exc).__name__)
        return {"status": "error", "error": type(exc).__name__, "message": "the broker cannot be reached"}
    return {"status": "ok"}


def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: the app's ServiceState."""
    state: ServiceState = request.app.state.medpg
    return state


__all__ = ["ServiceState", "get_state"]
