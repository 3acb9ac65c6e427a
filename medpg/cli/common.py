"""Shared plumbing for the CLI: settings, the database handle and turning errors into one line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from medpg.config import Settings, get_settings
from medpg.errors import MedpgError, is_transient

if TYPE_CHECKING:
    from typer import _click as click  # typer's own click: the classes its commands are built on

    # the database layer (SQLAlchemy, psycopg) loads when a command opens the database, so a command
    # that needs none (medpg search through a running service, --help) starts without it
    from medpg.db.engine import Database

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


_opened: tuple[Settings, bool, Database] | None = None


def database(strict: bool = False) -> Database:
    """The configured database, its settings following the model that made its vectors when the user
    chose none (``medpg.stored_model``); ``strict``: fail when that model cannot be loaded here
    (commands that encode). On a first run, say that the embedded server is being created."""
    global _opened
    cfg = get_settings()
    if _opened is not None and _opened[0] is cfg and (_opened[1] or not strict):
        return _opened[2]
    from medpg.stored_model import open_database

    announce_first_run(cfg)
    db = open_database(cfg, strict=strict)
    _opened = (cfg, strict, db)
    return db


def settings() -> Settings:
    """The settings commands pass to the core: those of ``database()``."""
    return database().settings


def announce_first_run(cfg: Settings) -> None:
    """One stderr line before the embedded server's data directory is created (it takes seconds)."""
    if cfg.database_url is not None:
        return
    pgdata = cfg.data_dir.expanduser() / "pgdata"
    if not pgdata.exists():
        err_console.print(
            f"initialising the embedded PostgreSQL in {pgdata} (first run)...",
            highlight=False,
            soft_wrap=True,
        )


def notify(message: str) -> None:
    """Print a status line (e.g. "loading the query encoder...") on stderr; stdout stays clean."""
    err_console.print(message, highlight=False, soft_wrap=True)


def progress_every_option() -> Any:
    """``--progress-every SECONDS``: how often a long job logs a line when stderr is not a terminal."""
    from medpg.progress import DEFAULT_INTERVAL

    return typer.Option(
        DEFAULT_INTERVAL,
        "--progress-every",
        metavar="SECONDS",
        help="Seconds between progress lines when stderr is not a terminal (a bar is shown on one).",
    )


# --------------------------------------------------------------------------------------------------
# help output: QUERY rather than {query} <str>, no <bool> after flags


class _Argument(TyperArgument):
    """An argument shown by its metavar alone (QUERY), in the usage line and its help row."""

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        name = self.metavar or (self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]


def _clean(param: click.Parameter) -> None:
    if isinstance(param, TyperArgument):
        param.__class__ = _Argument  # same fields; only what the help shows differs
        if param.metavar is None:
            param.metavar = (param.name or "").upper()
    elif isinstance(param, TyperOption) and param.metavar is None:
        # a flag takes no value: nothing to show after it; an option shows its name (--profile PROFILE)
        param.metavar = "" if param.is_flag or param.is_bool_flag else (param.name or "value").upper()


class Command(TyperCommand):
    """A typer command whose help shows metavars (``--mode MODE``, ``QUERY``), not Python types."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        for param in params:
            _clean(param)
        return params


class Group(TyperGroup):
    """A typer group with the same help conventions as ``Command``."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        for param in params:
            _clean(param)
        return params


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
