"""Shared plumbing for the CLI: settings, the database handle and turning errors into one line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from medpg.config import Settings, get_settings
from medpg.db.engine import Database
from medpg.errors import MedpgError, is_transient

P = ParamSpec("P")
R = TypeVar("R")

# Piped output (logs, CI, the demo) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report MedpgError as one ``error: ...`` line on stderr and exit with its code; no traceback.

    A transient error (``medpg.errors.is_transient``: the database is unavailable for now) says
    that trying again may help.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MedpgError as exc:
            err_console.print(error_line(exc), markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def error_line(exc: MedpgError) -> str:
    """The one line (rich markup) the CLI prints for ``exc``."""
    hint = " (transient: try again)" if is_transient(exc) else ""
    return f"[bold red]error:[/] {escape(str(exc))}{hint}"


def settings() -> Settings:
    return get_settings()


def database() -> Database:
    return Database(settings())


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
