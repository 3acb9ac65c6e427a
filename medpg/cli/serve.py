"""``medpg serve``: the HTTP API (``medpg.service.app``) under uvicorn.

uvicorn's own access log is off: it prints the raw path and query string, which can hold
patient ids or query text. The service logs one line per request instead (method, route
template, status, duration, key id; ``medpg.service.access``).
"""

from __future__ import annotations

import logging
import sys

import typer

from medpg.cli.common import Command, err_console, handle_errors


@handle_errors
def serve_command(
    host: str | None = typer.Option(
        None, metavar="HOST", help="Address to listen on (default: MEDPG_API_HOST)."
    ),
    port: int | None = typer.Option(
        None, metavar="PORT", min=1, max=65535, help="Port to listen on (default: MEDPG_API_PORT)."
    ),
    no_warm: bool = typer.Option(
        False, "--no-warm", help="Do not load the models at start-up (the first search loads them)."
    ),
) -> None:
    """Run the HTTP API: documents, search, status, FHIR DocumentReference, /health and /metrics."""
    import uvicorn

    from medpg.config import get_settings
    from medpg.service.app import create_app

    cfg = get_settings()
    changes = {name: value for name, value in (("api_host", host), ("api_port", port)) if value is not None}
    if changes:
        cfg = cfg.with_changes(**changes)
    _access_log_to_stderr()
    app = create_app(cfg, warm_models=not no_warm)
    shown_host = f"[{cfg.api_host}]" if ":" in cfg.api_host else cfg.api_host
    err_console.print(
        f"medpg service on http://{shown_host}:{cfg.api_port} (API docs at /docs)"
        + ("" if no_warm else "; loading the models first..."),
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(
        app,
        host=cfg.api_host,
        port=cfg.api_port,
        access_log=False,
        server_header=False,
        log_level="info",
    )


def _access_log_to_stderr() -> None:
    """The service's lines (``medpg.service`` and its access log) at INFO on stderr, whatever
    --verbose says."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("medpg.service")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``medpg`` command."""
    app.command("serve", cls=Command)(serve_command)
