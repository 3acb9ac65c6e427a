"""`medpg search` and `medpg eval`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from medpg.cli.common import (
    Command,
    console,
    database,
    err_console,
    handle_errors,
    notify,
    progress_every_option,
)
from medpg.vocabulary import FUSION_METHODS, LEXICAL_SCORERS, SEARCH_MODES

if TYPE_CHECKING:
    from medpg.evaluation import EvalReport
    from medpg.retrieval import SearchResponse


def _one_of(names: Sequence[str]) -> str:
    """``a, b or c`` for option help: the names come from medpg.vocabulary, checked by the core."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rank_score(rank: int | None, score: float | None) -> str:
    if rank is None and score is None:
        return "-"
    return f"{'#' + str(rank) if rank is not None else 'n/a'} {_fmt(score)}"


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@handle_errors
def search_command(
    query: str = typer.Argument(..., help="What to look for (any text; it is never parsed as syntax)."),
    k: int = typer.Option(10, "-k", "--k", metavar="N", help="How many documents to return."),
    # plain strings, not click choices: the core checks them, so a bad name is the same
    # InputError (message and exit code) from the CLI as from Python
    mode: str | None = typer.Option(
        None, metavar="MODE", help=f"{_one_of(SEARCH_MODES)} (default: MEDPG_SEARCH_MODE)."
    ),
    lexical: str | None = typer.Option(
        None, metavar="SCORER", help=f"{_one_of(LEXICAL_SCORERS)} (default: MEDPG_LEXICAL_SCORER)."
    ),
    fusion: str | None = typer.Option(
        None, metavar="METHOD", help=f"{_one_of(FUSION_METHODS)} (default: MEDPG_FUSION)."
    ),
    rerank: bool | None = typer.Option(
        None, "--rerank/--no-rerank", help="Cross-encoder rerank (default: on when one is configured)."
    ),
    source: list[str] | None = typer.Option(
        None, "--source", metavar="NAME", help="Only this source (repeatable: any of them)."
    ),
    metadata: str | None = typer.Option(
        None,
        metavar="JSON",
        help='Metadata containment as JSON, e.g. \'{"specialty": "Cardiovascular / Pulmonary"}\'.',
    ),
    date_from: str | None = typer.Option(
        None, metavar="DATE", help="Documents dated on or after (ISO 8601)."
    ),
    date_to: str | None = typer.Option(None, metavar="DATE", help="Documents dated before (ISO 8601)."),
    patient: list[str] | None = typer.Option(
        None, "--patient", metavar="ID", help="Only this patient id (repeatable: any of them)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the response as JSON."),
) -> None:
    """Hybrid search: dense + BM25 fused in PostgreSQL, reranked, each result explained."""
    import orjson

    from medpg.retrieval import search as run_search

    # Encoding needs the model that made the stored vectors; lexical search needs none.
    db = database(strict=mode != "lexical")
    response = run_search(
        query,
        k=k,
        mode=mode,
        lexical=lexical,
        fusion=fusion,
        rerank=rerank,
        filters=_filters(source, metadata, date_from, date_to, patient),
        settings=db.settings,
        db=db,
        notify=notify,
    )
    if as_json:
        typer.echo(orjson.dumps(response.to_dict(), option=orjson.OPT_INDENT_2, default=str).decode())
        return
    for warning in response.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if response.results:
        _print_table(response)
    else:
        # one line, not an empty table frame; the warnings above say why when medpg knows
        console.print(f"no results — {_summary(response)}", highlight=False, soft_wrap=True)


@handle_errors
def eval_command(
    dataset_dir: Path = typer.Argument(
        ..., help="BEIR data set: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."
    ),
    split: str = typer.Option(
        "test", metavar="SPLIT", help="Qrels split to evaluate (tune on dev/train, report test)."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="Markdown table to write (default: ./<dataset>_<split>_eval.md); "
        "a .json with the same name is written beside it.",
    ),
    systems: str | None = typer.Option(
        None, metavar="NAMES", help="Comma-separated subset of systems to run (default: all configured)."
    ),
    max_queries: int | None = typer.Option(
        None, metavar="N", help="Evaluate only the first N queries (quick checks)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars or progress lines."),
    progress_every: float = progress_every_option(),
) -> None:
    """Evaluate every configured system on a BEIR data set: nDCG@10, MRR@10, Recall@100, latency."""
    from medpg.evaluation import evaluate_dataset, render_markdown

    db = database(strict=True)
    cfg = db.settings
    name = dataset_dir.resolve().name
    out = output or Path(f"{name}_{split}_eval.md")
    report = evaluate_dataset(
        db,
        cfg,
        dataset_dir,
        split=split,
        systems=[s.strip() for s in systems.split(",")] if systems else None,
        max_queries=max_queries,
        progress=False if no_progress else None,
        progress_interval=progress_every,
        log=lambda msg: err_console.print(msg, highlight=False, soft_wrap=True),
    )
    markdown = render_markdown(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown, encoding="utf-8")
    out.with_suffix(".json").write_text(report.to_json(), encoding="utf-8")
    _print_eval(report)
    console.print(f"wrote {out} and {out.with_suffix('.json')}", highlight=False)


def _filters(
    sources: list[str] | None,
    metadata: str | None,
    date_from: str | None,
    date_to: str | None,
    patients: list[str] | None,
) -> dict[str, Any]:
    """The options as a filters mapping; ``Filters.coerce`` in the core checks the values."""
    import orjson

    from medpg.errors import InputError

    meta = None
    if metadata is not None:
        try:
            meta = orjson.loads(metadata)
        except orjson.JSONDecodeError as exc:
            # the position only: the message of some decoders quotes the document
            raise InputError(
                f"--metadata is not valid JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
    return {
        "sources": sources or None,
        "metadata": meta,
        "date_from": date_from,
        "date_to": date_to,
        "patient_ids": patients or None,
    }


def register(app: typer.Typer) -> None:
    """Add the search commands to the top-level CLI."""
    app.command("search", cls=Command)(search_command)
    app.command("eval", cls=Command)(eval_command)


def _summary(response: SearchResponse) -> str:
    """What ran, the query's terms and the time taken, for the line above the results."""
    terms = ", ".join(response.query_terms) or "(none)"
    return (
        f"mode {response.mode}, lexical {response.lexical}, fusion {response.fusion}"
        f"{', reranked' if response.reranked else ''}; query terms: {terms}; "
        f"sql {response.timings_ms.get('sql', 0):.1f} ms, total {response.timings_ms.get('total', 0):.1f} ms"
    )


def _print_table(response: SearchResponse) -> None:
    from rich.table import Table

    console.print(f"[bold]{len(response.results)} results[/] — {escape(_summary(response))}", highlight=False)
    table = Table(show_lines=True, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("document", ratio=3)
    table.add_column("dense", no_wrap=True)
    table.add_column("lexical", no_wrap=True)
    table.add_column("rerank", no_wrap=True)
    table.add_column("evidence", ratio=5)
    for r in response.results:
        ex = r.explanation
        doc = f"[bold]{r.title or '(untitled)'}[/]\n{r.source}:{r.external_id}"
        lexical = _rank_score(ex.lexical_rank, ex.lexical_score)
        if ex.matched_terms:
            lexical += "\n" + ", ".join(ex.matched_terms)
        span = (
            f"[{r.evidence.char_start}:{r.evidence.char_end}] " if r.evidence.char_start is not None else ""
        )
        table.add_row(
            str(r.rank),
            _fmt(r.score),
            doc,
            _rank_score(ex.dense_rank, ex.dense_score),
            lexical,
            _fmt(ex.rerank_score),
            span + _snippet(r.evidence.text),
        )
    console.print(table)


def _print_eval(report: EvalReport) -> None:
    from rich.table import Table

    table = Table(title=f"{report.dataset} ({report.split}, {report.queries} queries)")
    for col in ("system", "nDCG@10", "MRR@10", "Recall@100", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for s in report.systems:
        table.add_row(
            s.name,
            f"{s.ndcg10:.4f}",
            f"{s.mrr10:.4f}",
            f"{s.recall100:.4f}",
            f"{s.p50_ms:.2f}",
            f"{s.p95_ms:.2f}",
        )
    console.print(table)
