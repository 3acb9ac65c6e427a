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
from medpg.errors import MedpgError
from medpg.vocabulary import FUSION_METHODS, LEXICAL_SCORERS, SEARCH_MODES

if TYPE_CHECKING:
    from medpg.evaluation import EvalReport


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
    ctx: typer.Context,
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
    """Hybrid search: dense + BM25 fused in PostgreSQL, reranked, each result explained.

    With MEDPG_API_KEY set and a medpg service answering at MEDPG_API_URL (`medpg serve`), the
    search runs there (its models are loaded already); otherwise in this process.
    """
    import orjson

    filters = _filters(source, metadata, date_from, date_to, patient)
    options: dict[str, Any] = {"k": k, "mode": mode, "lexical": lexical, "fusion": fusion, "rerank": rerank}
    verbose = bool(ctx.find_root().params.get("verbose"))
    response = _search_via_service(query, options, filters, verbose=verbose)
    if response is None:
        response = _search_here(query, options, filters)
    if as_json:
        typer.echo(orjson.dumps(response, option=orjson.OPT_INDENT_2, default=str).decode())
        return
    for warning in response["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if response["results"]:
        _print_table(response)
    else:
        # one line, not an empty table frame; the warnings above say why when medpg knows
        console.print(f"no results — {_summary(response)}", highlight=False, soft_wrap=True)


def _search_here(query: str, options: dict[str, Any], filters: dict[str, Any]) -> dict[str, Any]:
    """``medpg.search()`` in this process; the response as ``SearchResponse.to_dict()``."""
    from medpg.retrieval import search as run_search

    # Encoding needs the model that made the stored vectors; lexical search needs none.
    db = database(strict=options["mode"] != "lexical")
    response = run_search(query, **options, filters=filters, settings=db.settings, db=db, notify=notify)
    return response.to_dict()


def _search_via_service(
    query: str, options: dict[str, Any], filters: dict[str, Any], *, verbose: bool = False
) -> dict[str, Any] | None:
    """The response of a running medpg service (``POST /search``), or None to search here.

    Used when MEDPG_API_KEY is set and the service answers ``/health`` within PROBE_SECONDS.
    Only light modules are imported before that is known (no database driver, no model library).
    ``verbose`` (``medpg -v``): a dim line on stderr says which way the search went.
    """

    def note(message: str) -> None:
        if verbose:
            err_console.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)

    from medpg.config import get_settings

    cfg = get_settings()
    if cfg.api_key is None:
        return None
    import httpx

    url = (cfg.api_url or f"http://{_url_host(cfg.api_host)}:{cfg.api_port}").rstrip("/")
    with httpx.Client(base_url=url, trust_env=False) as client:
        try:
            probe = client.get("/health", timeout=PROBE_SECONDS)
        except httpx.HTTPError as exc:
            note(f"no medpg service at {url} ({type(exc).__name__}): searching in this process")
            return None
        if probe.status_code != 200:
            note(
                f"the medpg service at {url} answers /health with {probe.status_code}: searching in this process"
            )
            return None
        payload = {"query": query, **options, "filters": {k: v for k, v in filters.items() if v is not None}}
        try:
            answer = client.post(
                "/search",
                json=payload,
                headers={"Authorization": f"Bearer {cfg.api_key.get_secret_value()}"},
                timeout=httpx.Timeout(SEARCH_SECONDS, connect=PROBE_SECONDS),
            )
        except httpx.HTTPError as exc:
            raise MedpgError(
                f"the medpg service at {url} did not answer the search ({type(exc).__name__}); "
                "unset MEDPG_API_KEY to search in this process"
            ) from None
    if answer.status_code != 200:
        raise _service_error(url, answer.status_code, answer.content)
    note(f"searched through the medpg service at {url}")
    result: dict[str, Any] = answer.json()
    return result


# A refused connection (no service) answers at once; a service whose /health (a database round trip)
# is slow, on a loaded machine, still gets a moment before the CLI searches in-process instead.
PROBE_SECONDS = 2.0
SEARCH_SECONDS = 300.0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: reach it on this machine
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _service_error(url: str, status: int, content: bytes) -> MedpgError:
    """The service's error as the MedpgError it was (same message and exit code as in-process)."""
    import orjson

    from medpg import errors

    try:
        error = orjson.loads(content)["error"]
        name, message = str(error["type"]), str(error["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return MedpgError(f"the medpg service at {url} answered {status}")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, MedpgError)):
        cls = errors.InputError if status == 422 else MedpgError
    hint = "; check MEDPG_API_KEY" if status in (401, 403) else ""
    return cls(f"{message} (medpg service at {url}{hint})")


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
        "a .json and a .png plot with the same name are written beside it.",
    ),
    systems: str | None = typer.Option(
        None, metavar="NAMES", help="Comma-separated subset of systems to run (default: all configured)."
    ),
    max_queries: int | None = typer.Option(
        None, metavar="N", help="Evaluate only the first N queries (quick checks)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars or progress lines."),
    progress_every: float = progress_every_option(),
    plot: bool = typer.Option(
        True, "--plot/--no-plot", help="Write the PNG of nDCG@10 and Recall@100 beside the table."
    ),
) -> None:
    """Evaluate every configured system on a BEIR data set: nDCG@10, MRR@10, Recall@100, latency.

    Every system is compared with the default hybrid: Δ, a paired t-test (Holm-adjusted) and
    per-query wins/ties/losses.
    """
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
    png = out.with_suffix(".png")
    markdown = render_markdown(report, plot=png.name if plot else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown, encoding="utf-8")
    out.with_suffix(".json").write_text(report.to_json(), encoding="utf-8")
    written = [out, out.with_suffix(".json")]
    if plot:
        from medpg.eval_plot import write_plot

        written.append(write_plot(report, png))
    _print_eval(report)
    console.print(
        f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}", highlight=False, soft_wrap=True
    )


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


def _summary(response: dict[str, Any]) -> str:
    """What ran, the query's terms and the time taken, for the line above the results."""
    terms = ", ".join(response["query_terms"]) or "(none)"
    timings = response["timings_ms"]
    return (
        f"mode {response['mode']}, lexical {response['lexical']}, fusion {response['fusion']}"
        f"{', reranked' if response['reranked'] else ''}; query terms: {terms}; "
        f"sql {timings.get('sql', 0):.1f} ms, total {timings.get('total', 0):.1f} ms"
    )


def _print_table(response: dict[str, Any]) -> None:
    """The results as a table; ``response`` is ``SearchResponse.to_dict()`` (or the API's same JSON)."""
    from rich.table import Table

    results = response["results"]
    console.print(f"[bold]{len(results)} results[/] — {escape(_summary(response))}", highlight=False)
    table = Table(show_lines=True, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("document", ratio=3)
    table.add_column("dense", no_wrap=True)
    table.add_column("lexical", no_wrap=True)
    table.add_column("rerank", no_wrap=True)
    table.add_column("evidence", ratio=5)
    for r in results:
        ex = r["explanation"] or {}
        evidence = r["evidence"] or {"text": "", "char_start": None, "char_end": None}
        doc = f"[bold]{r['title'] or '(untitled)'}[/]\n{r['source']}:{r['external_id']}"
        lexical = _rank_score(ex.get("lexical_rank"), ex.get("lexical_score"))
        if ex.get("matched_terms"):
            lexical += "\n" + ", ".join(ex["matched_terms"])
        span = (
            f"[{evidence['char_start']}:{evidence['char_end']}] "
            if evidence["char_start"] is not None
            else ""
        )
        table.add_row(
            str(r["rank"]),
            _fmt(r["score"]),
            doc,
            _rank_score(ex.get("dense_rank"), ex.get("dense_score")),
            lexical,
            _fmt(ex.get("rerank_score")),
            span + _snippet(evidence["text"]),
        )
    console.print(table)


def _print_eval(report: EvalReport) -> None:
    from rich.table import Table

    table = Table(title=f"{report.dataset} ({report.split}, {report.queries} queries)")
    columns = ("system", "nDCG@10", "MRR@10", "Recall@100", "p50 ms", "p95 ms", "Δ nDCG@10", "p (Holm)", "W/T/L")
    for col in columns:
        table.add_column(col, justify="left" if col == "system" else "right")
    for s in report.systems:
        vs = s.vs_default["ndcg@10"] if s.vs_default else None
        table.add_row(
            s.name,
            f"{s.ndcg10:.4f}",
            f"{s.mrr10:.4f}",
            f"{s.recall100:.4f}",
            f"{s.p50_ms:.2f}",
            f"{s.p95_ms:.2f}",
            "-" if vs is None else f"{vs.delta:+.4f}{' *' if vs.significant else ''}",
            "-" if vs is None or vs.p_holm is None else f"{vs.p_holm:.4f}",
            "-" if vs is None else f"{vs.wins}/{vs.ties}/{vs.losses}",
        )
    console.print(table)
    if report.significance:
        console.print(
            f"Δ, p and W/T/L against {report.significance['baseline']}: {report.significance['test']}, "
            f"{report.significance['correction']}; * p ≤ {report.significance['alpha']}",
            highlight=False,
            soft_wrap=True,
        )
