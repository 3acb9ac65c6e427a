"""`medpg learn`: train a query adaptation from judgments; list, activate, deactivate, roll back.

``medpg learn DATASET_DIR`` (the ``train`` command is implied) learns from a BEIR qrels file,
``medpg learn --feedback`` from ``medpg.feedback``. The other commands switch versions, each in one
transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from medpg.cli.common import Command, Group, console, database, err_console, handle_errors

if TYPE_CHECKING:
    from typer import _click as click

    from medpg.learning.learn import LearnReport
    from medpg.learning.store import Adaptation, Switch


# TrainConfig's defaults, written out so that importing the CLI loads no learning code (a test
# checks they agree)
LEARNING_RATE = 3e-4
BATCH_SIZE = 64


class LearnGroup(Group):
    """``medpg learn ARGS``: ARGS that name no subcommand are the ``train`` command's."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=LearnGroup,
    help="Teach medpg from judgments: a query adaptation trained against the stored vectors (no re-embedding), "
    "versioned in the database, guarded by held-out judgments. `medpg learn DATASET_DIR` or "
    "`medpg learn --feedback` trains; list, activate, deactivate and rollback switch versions.",
    no_args_is_help=True,
)

_TENANT_HELP = (
    "The tenant whose adaptation this is (and whose documents and feedback it learns from); "
    "default: an adaptation for every tenant, learned from tenant 'default'."
)

_SWITCH_HELP = "The tenant whose adaptation to switch (default: the adaptation for every tenant)."


def _say(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


@app.command("train", cls=Command)
@handle_errors
def train_command(
    dataset_dir: Path | None = typer.Argument(
        None,
        help="BEIR data set directory: queries.jsonl and qrels/<split>.tsv (its corpus already ingested).",
    ),
    feedback: bool = typer.Option(
        False, "--feedback", help="Learn from the feedback in medpg.feedback instead."
    ),
    split: str = typer.Option("train", metavar="SPLIT", help="The qrels split to train on."),
    dev_split: str | None = typer.Option(
        None,
        "--dev-split",
        metavar="SPLIT",
        help="A qrels split held out for early stopping, fusion weights and the guard "
        "(default: 20% of the queries, chosen by a seeded hash of their ids).",
    ),
    source: str | None = typer.Option(
        None, metavar="NAME", help="Source of the judged documents (default: the data set's directory name)."
    ),
    tenant: str | None = typer.Option(None, metavar="TENANT", help=_TENANT_HELP),
    force: bool = typer.Option(
        False,
        "--force",
        help="Activate it even if it scores lower on the held-out judgments than what is in use.",
    ),
    no_activate: bool = typer.Option(False, "--no-activate", help="Store it without activating it."),
    max_epochs: int = typer.Option(40, metavar="N", help="At most N passes over the training queries."),
    patience: int = typer.Option(3, metavar="N", help="Stop after N epochs without a held-out improvement."),
    learning_rate: float = typer.Option(
        LEARNING_RATE,
        metavar="RATE",
        help="AdamW learning rate (a few hundred queries: try 3e-3).",
    ),
    batch_size: int = typer.Option(BATCH_SIZE, metavar="N", help="Queries per training step."),
    seed: int = typer.Option(0, metavar="N", help="Random seed (batch order)."),
) -> None:
    """Train a query adaptation and fusion weights, check them on held-out judgments, store them.

    It becomes active only if the held-out nDCG@10 of the default hybrid search with it is not
    lower than with what searches use now (both are printed); --force overrides that.
    """
    from medpg.learning import judgments
    from medpg.learning.learn import learn
    from medpg.learning.train import TrainConfig
    from medpg.retrieval.types import Filters

    if feedback == (dataset_dir is not None):
        raise typer.BadParameter("give a BEIR data set directory or --feedback (one of them)")
    db = database(strict=True)
    cfg = db.settings
    filters = Filters()
    if dataset_dir is not None:
        found = judgments.from_beir(
            db,
            dataset_dir,
            split=split,
            dev_split=dev_split,
            source=source,
            tenant=tenant,
            max_query_chars=cfg.max_query_chars,
        )
        train, heldout, trained_on = found.train, found.heldout, found.trained_on
        filters = Filters(sources=(trained_on["documents_source"],))
        what = f"{dataset_dir} ({split})"
    else:
        train, heldout, trained_on = judgments.from_feedback(
            db, tenant=tenant, max_query_chars=cfg.max_query_chars
        )
        what = f"the feedback of tenant {trained_on['tenant']!r} ({trained_on['feedback_rows']:,} rows)"
    _say(
        f"learning from {what}: {len(train):,} training queries ({train.judgment_count():,} judgments); "
        f"held out: {trained_on['heldout_how']} ({len(heldout):,} queries)"
    )
    report = learn(
        db,
        cfg,
        train=train,
        heldout=heldout,
        trained_on=trained_on,
        tenant=tenant,
        filters=filters,
        config=TrainConfig(
            max_epochs=max_epochs,
            patience=patience,
            learning_rate=learning_rate,
            batch_size=batch_size,
            seed=seed,
        ),
        force=force,
        activate=not no_activate,
        log_line=_say,
    )
    _print_report(report)
    if report.refused and not no_activate:
        raise typer.Exit(1)


def _whose(tenant: str | None) -> str:
    return "every tenant" if tenant is None else f"tenant {tenant!r}"


def _baseline_name(report: LearnReport) -> str:
    return (
        f"adaptation {report.baseline_id}, in use now" if report.baseline_id is not None else "no adaptation"
    )


def _print_report(report: LearnReport) -> None:
    gain = report.heldout_ndcg10 - report.baseline_ndcg10
    console.print(
        f"adaptation {report.adaptation_id} ({_whose(report.tenant)}): held-out nDCG@10 of the default hybrid "
        f"search {report.heldout_ndcg10:.4f} with it, {report.baseline_ndcg10:.4f} with {_baseline_name(report)} "
        f"({gain:+.4f})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"fusion weights: dense {report.dense_weight:g}, lexical {report.lexical_weight:g}; held-out dense "
        f"retrieval alone {report.dense_before:.4f} -> {report.dense_after:.4f}; trained in "
        f"{report.train_seconds:.0f} s (best epoch {report.best_epoch} of {report.epochs_run}), "
        f"{report.seconds:.0f} s in all",
        highlight=False,
        soft_wrap=True,
    )
    if report.activated and report.forced:
        console.print(
            f"[bold yellow]forced:[/] adaptation {report.adaptation_id} is active although it scores "
            f"{-gain:.4f} lower than {_baseline_name(report)} on the held-out judgments "
            "(`medpg learn rollback` reverts)",
            highlight=False,
            soft_wrap=True,
        )
    elif report.activated:
        console.print(
            f"active: adaptation {report.adaptation_id} for {_whose(report.tenant)} "
            "(`medpg learn rollback` reverts)",
            highlight=False,
            soft_wrap=True,
        )
    elif report.refused:
        err_console.print(
            f"[bold red]refused:[/] adaptation {report.adaptation_id} scores {report.heldout_ndcg10:.4f} on the "
            f"held-out judgments against {report.baseline_ndcg10:.4f} for {_baseline_name(report)}; it is stored "
            f"but not active (`medpg learn activate {report.adaptation_id} --force` activates it anyway)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"stored, not active: `medpg learn activate {report.adaptation_id}` activates it", highlight=False
        )


@app.command("list", cls=Command)
@handle_errors
def list_command(
    tenant: str | None = typer.Option(
        None, metavar="TENANT", help="Only this tenant's and those for every tenant."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print them as JSON."),
) -> None:
    """Stored query adaptations, newest first: which is active, trained on what, their held-out figures."""
    from rich.table import Table

    from medpg.learning.store import list_adaptations

    rows = list_adaptations(database(), tenant=tenant)
    if as_json:
        import orjson

        typer.echo(orjson.dumps([a.as_dict() for a in rows], option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        console.print(
            "no query adaptations stored; `medpg learn DATASET_DIR` or `medpg learn --feedback` trains one"
        )
        return
    table = Table(title="query adaptations (medpg.query_adaptations)")
    for column in ("id", "active", "for", "created", "trained on", "held-out nDCG@10", "was", "weights d/l"):
        table.add_column(column, justify="right" if column in ("id", "held-out nDCG@10", "was") else "left")
    for a in rows:
        table.add_row(
            str(a.id),
            _active_label(a),
            "every tenant" if a.tenant is None else a.tenant,
            a.created_at.strftime("%Y-%m-%d %H:%M"),
            escape(_trained_on(a.trained_on)),
            f"{a.heldout_ndcg10:.4f}",
            f"{a.baseline_ndcg10:.4f}" + (f" (#{a.baseline_id})" if a.baseline_id is not None else " (none)"),
            f"{a.dense_weight:g}/{a.lexical_weight:g}",
        )
    console.print(table)


def _active_label(a: Adaptation) -> str:
    if not a.active:
        return ""
    return "yes (forced)" if a.forced else "yes"


def _trained_on(t: dict[str, Any]) -> str:
    feedback = t.get("source") == "feedback"
    what = f"feedback of {t.get('tenant')}" if feedback else f"{t.get('dataset')} {t.get('split')}"
    held = f"held out {t.get('heldout')} ({t.get('heldout_queries', 0):,})"
    return f"{what}: {t.get('train_queries', 0):,} queries, {held}"


def _print_switch(switch: Switch, verb: str) -> None:
    before = f"adaptation {switch.before}" if switch.before is not None else "none"
    after = f"adaptation {switch.after}" if switch.after is not None else "none"
    console.print(f"{verb} for {_whose(switch.tenant)}: {before} -> {after}", highlight=False)


@app.command("activate", cls=Command)
@handle_errors
def activate_command(
    adaptation_id: int = typer.Argument(..., metavar="ID", help="The adaptation (`medpg learn list`)."),
    force: bool = typer.Option(False, "--force", help="Activate one that scored lower than its baseline."),
) -> None:
    """Make a stored adaptation the active one of its tenant (one transaction)."""
    from medpg.errors import InputError
    from medpg.learning import store

    db = database()
    with db.connect() as conn:
        a = store.get_adaptation(conn, adaptation_id)
        conn.rollback()
    if a.heldout_ndcg10 < a.baseline_ndcg10 and not force:
        raise InputError(
            f"adaptation {a.id} scored {a.heldout_ndcg10:.4f} on its held-out judgments against "
            f"{a.baseline_ndcg10:.4f} for what was in use when it was trained; --force activates it anyway"
        )
    _print_switch(store.activate(db, adaptation_id, forced=a.heldout_ndcg10 < a.baseline_ndcg10), "activated")


@app.command("deactivate", cls=Command)
@handle_errors
def deactivate_command(tenant: str | None = typer.Option(None, metavar="TENANT", help=_SWITCH_HELP)) -> None:
    """No adaptation for the tenant (or for every tenant) afterwards; searches use the raw encoder."""
    from medpg.learning import store

    _print_switch(store.deactivate(database(), tenant), "deactivated")


@app.command("rollback", cls=Command)
@handle_errors
def rollback_command(tenant: str | None = typer.Option(None, metavar="TENANT", help=_SWITCH_HELP)) -> None:
    """Back to the adaptation that was active before the active one (or to none), in one transaction."""
    from medpg.learning import store

    _print_switch(store.rollback(database(), tenant), "rolled back")


def register(root: typer.Typer) -> None:
    """Add `medpg learn` to the top-level CLI."""
    root.add_typer(app, name="learn", cls=LearnGroup)


__all__ = ["app", "register"]
