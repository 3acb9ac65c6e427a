"""Evaluate medpg's retrieval systems on a BEIR-format data set (nDCG@10, MRR@10, Recall@100, latency).

The data set is ingested and embedded first if needed (both are idempotent: unchanged documents
and current vectors are skipped), queries are encoded once, then every system runs every query
through the same SQL function the product uses (``medpg.hybrid_search``). Metrics come from ranx;
latency is the SQL call alone (query encoding excluded), p50/p95 over the queries.

Tune on dev or train (``--split dev``), report test. Queries are encoded as search encodes them:
with the active query adaptation (``medpg learn``) applied, and its fusion weights as the defaults.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from medpg.config import Settings, medpg_environment
from medpg.db.engine import Database
from medpg.errors import InputError
from medpg.progress import DEFAULT_INTERVAL, progress_bar
from medpg.retrieval import sql
from medpg.retrieval.pipeline import search, search_params
from medpg.retrieval.types import Filters
from medpg.significance import MetricComparison, compare_with_baseline, describe, filled_run
from medpg.vocabulary import FusionMethod, LexicalScorer, SearchMode

if TYPE_CHECKING:
    from medpg.learning.active import ActiveAdaptation

K_FETCH = 100  # results scored per query (Recall@100)
K_TIMED = 10  # results in the timed call


@dataclass(frozen=True)
class System:
    """One configuration to evaluate: a mode, a lexical scorer, a fusion, and setting overrides."""

    name: str
    mode: SearchMode
    lexical: LexicalScorer = "bm25"
    fusion: FusionMethod = "weighted"
    rerank: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    default: bool = False  # the system every other one is compared with (paired test, wins/ties/losses)


def default_systems(settings: Settings, rerank_available: bool) -> list[System]:
    """Every configured system: each lexical scorer alone, dense alone, hybrids, + rerank when possible.

    The hybrids other than the default run without feedback, as they did before it existed; the
    weighted and adaptive BM25 hybrids without feedback show what each default choice adds.
    """
    plain = {"feedback": "none"}
    default = f"hybrid {settings.fusion}" + (f" + {settings.feedback}" if settings.feedback != "none" else "")
    systems = [
        System(
            "lexical ts_rank_cd",
            "lexical",
            "ts_rank",
            overrides={"ts_rank_cover_density": True, "ts_rank_normalization": 1},
        ),
        System(
            "lexical ts_rank",
            "lexical",
            "ts_rank",
            overrides={"ts_rank_cover_density": False, "ts_rank_normalization": 0},
        ),
        System("lexical bm25", "lexical", "bm25"),
        System("dense", "dense"),
        System(
            "hybrid rrf (bm25 + dense)",
            "hybrid",
            "bm25",
            "rrf",
            overrides={"dense_weight": 1.0, "lexical_weight": 1.0, **plain},
        ),
        System(
            "hybrid rrf (ts_rank + dense)",
            "hybrid",
            "ts_rank",
            "rrf",
            overrides={
                "ts_rank_cover_density": False,
                "ts_rank_normalization": 0,
                "dense_weight": 1.0,
                "lexical_weight": 1.0,
                **plain,
            },
        ),
        System(
            "hybrid weighted (ts_rank + dense)",
            "hybrid",
            "ts_rank",
            "weighted",
            overrides={"ts_rank_cover_density": False, "ts_rank_normalization": 0, **plain},
        ),
        System("hybrid weighted (bm25 + dense)", "hybrid", "bm25", "weighted", overrides=plain),
        System("hybrid adaptive (bm25 + dense)", "hybrid", "bm25", "adaptive", overrides=plain),
        System(
            f"{default} (bm25 + dense) (default)",
            "hybrid",
            "bm25",
            settings.fusion,
            default=True,
        ),
    ]
    if rerank_available:
        systems.append(
            System(
                f"{default} (bm25 + dense) + rerank",
                "hybrid",
                "bm25",
                settings.fusion,
                rerank=True,
            )
        )
    return systems


@dataclass
class SystemResult:
    name: str
    ndcg10: float
    mrr10: float
    recall100: float
    p50_ms: float
    p95_ms: float
    latency_note: str = "SQL call"
    settings: dict[str, Any] = field(default_factory=dict)
    # Against the default system, by metric ("ndcg@10", "recall@100"); None for the default itself
    # and when the default was not run.
    vs_default: dict[str, MetricComparison] | None = None


@dataclass
class EvalReport:
    dataset: str
    split: str
    queries: int
    documents: int
    chunks_embedded: int
    model: str | None
    command: str
    machine: str
    created_at: str
    settings: dict[str, Any]
    systems: list[SystemResult]
    # How ``vs_default`` was computed (baseline, test, alpha, correction); None without the default.
    significance: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


@dataclass(frozen=True)
class BeirData:
    name: str
    corpus: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(dataset_dir: Path, split: str) -> BeirData:
    """Queries that have judgments in ``qrels/<split>.tsv`` (header line skipped) and those judgments."""
    dataset_dir = Path(dataset_dir)
    corpus = dataset_dir / "corpus.jsonl"
    queries_path = dataset_dir / "queries.jsonl"
    qrels_path = dataset_dir / "qrels" / f"{split}.tsv"
    for path in (corpus, queries_path, qrels_path):
        if not path.is_file():
            raise InputError(
                f"{path}: missing; a BEIR data set has corpus.jsonl, queries.jsonl and qrels/{split}.tsv"
            )
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.reader(fh, delimiter="\t")):
            if not row or (i == 0 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # header
            if len(row) < 3:
                raise InputError(f"{qrels_path}:{i + 1}: expected query-id, corpus-id, score")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries: dict[str, str] = {}
    with queries_path.open("rb") as fh:
        for line in fh:
            if line.strip():
                obj = orjson.loads(line)
                if obj["_id"] in qrels:
                    queries[str(obj["_id"])] = obj.get("text", "")
    missing = set(qrels) - set(queries)
    if missing:
        raise InputError(f"{len(missing)} judged queries are missing from {queries_path}")
    return BeirData(dataset_dir.resolve().name, corpus, queries, qrels)


def _scalar(conn: Any, query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    return row[0] if row else None


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def _metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    from medpg.dependency_warnings import ranx_compiling_quietly

    # ranx needs every judged query in the run; an empty result scores 0.
    with ranx_compiling_quietly():
        scores = ranx_evaluate(
            Qrels(qrels),
            Run(filled_run(qrels, run)),
            ["ndcg@10", "mrr@10", "recall@100"],
            make_comparable=True,
        )
    return {k: float(v) for k, v in scores.items()}


def _machine(db: Database) -> str:
    with db.connect() as conn:
        pg = conn.execute("SHOW server_version").fetchone()
        vec = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        conn.rollback()
    cpu = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, PostgreSQL {pg[0] if pg else '?'}, pgvector {vec[0] if vec else '?'}, "
        f"{'embedded' if db.embedded else 'external'} server; load average {load} when the run ended "
        "(latency is wall-clock on a shared machine)"
    )


# Settings recorded with every report: what a reader needs to reproduce the numbers.
REPORTED_SETTINGS = (
    "model_profile",
    "candidates",
    "fusion",
    "feedback",
    "feedback_docs",
    "feedback_weight",
    "rrf_k",
    "dense_weight",
    "lexical_weight",
    "bm25_k1",
    "bm25_b",
    "bm25_title_weight",
    "hnsw_ef_search",
    "chunk_tokens",
    "chunk_overlap",
    "article_max_tokens",
    "rerank_top_k",
)


@dataclass(frozen=True)
class _Corpus:
    """The ingested data set as the runs see it."""

    source: str
    external_ids: dict[int, str]  # document id -> the data set's id, which the qrels use
    filters: Filters
    model: str | None
    chunks_embedded: int


@dataclass(frozen=True)
class _Queries:
    """The judged queries evaluated, in id order, with their judgments and query vectors."""

    ids: list[str]
    texts: list[str]
    embeddings: Any
    qrels: dict[str, dict[str, int]]
    adaptation: ActiveAdaptation | None = None

    def rows(self) -> Iterator[tuple[str, str, Any]]:
        return zip(self.ids, self.texts, self.embeddings, strict=True)


@dataclass(frozen=True)
class _Run:
    """One system's ranking of every query, its latencies in milliseconds and what they measure."""

    ranking: dict[str, dict[str, float]]
    latencies_ms: list[float]
    latency_note: str


def evaluate_dataset(
    db: Database,
    settings: Settings,
    dataset_dir: Path,
    *,
    split: str = "test",
    systems: Sequence[str] | None = None,
    max_queries: int | None = None,
    progress: bool | None = False,
    log: Callable[[str], None] = lambda _msg: None,
    progress_interval: float = DEFAULT_INTERVAL,
) -> EvalReport:
    """Ingest and embed ``dataset_dir`` if needed, then run and score every system.

    ``progress`` (True or None): bars on a terminal, else a line with counts and rate every
    ``progress_interval`` seconds on stderr, for ingest, embedding and each system's queries.
    """
    shown = _Progress(progress, progress_interval)
    data = load_beir(dataset_dir, split)
    corpus = _prepare_corpus(db, settings, data, progress=shown, log=log)
    queries = _encode_queries(db, settings, data, max_queries, log=log)
    chosen = _choose_systems(settings, systems)
    results = []
    rankings: dict[str, dict[str, dict[str, float]]] = {}
    for system in chosen:
        run = _run_system(db, settings, system, corpus, queries, shown)
        result = _score_system(system, queries, run)
        log(f"{system.name}: nDCG@10 {result.ndcg10:.4f}, p50 {result.p50_ms:.2f} ms")
        results.append(result)
        rankings[system.name] = run.ranking
    report = _build_report(db, settings, data, split, corpus, queries, results)
    baseline = next((s.name for s in chosen if s.default), None)
    if baseline is not None:
        compare_to_default(report, queries.qrels, rankings, baseline)
    return report


def compare_to_default(
    report: EvalReport,
    qrels: dict[str, dict[str, int]],
    rankings: dict[str, dict[str, dict[str, float]]],
    baseline: str,
) -> None:
    """Fill each system's ``vs_default`` and the report's ``significance`` from the runs' rankings."""
    comparisons = compare_with_baseline(qrels, rankings, baseline)
    for result in report.systems:
        result.vs_default = comparisons.get(result.name)
    report.significance = describe(baseline, len(comparisons), len(qrels))


@dataclass(frozen=True)
class _Progress:
    """How the evaluation shows progress (``medpg.progress.progress_bar``'s enabled and interval)."""

    enabled: bool | None
    interval: float

    def bar(self, total: int, desc: str, unit: str) -> Any:
        return progress_bar(total, desc=desc, unit=unit, enabled=self.enabled, interval=self.interval)


def _prepare_corpus(
    db: Database, settings: Settings, data: BeirData, *, progress: _Progress, log: Callable[[str], None]
) -> _Corpus:
    """Ingest and embed the corpus (both skip what is current), and check whose vectors are stored."""
    from medpg import schema
    from medpg.embedding import Embedder
    from medpg.ingest import default_source, ingest_file

    schema.check(db)
    source = default_source(data.corpus)
    report = ingest_file(
        db,
        settings,
        data.corpus,
        source=source,
        progress=progress.enabled,
        progress_interval=progress.interval,
    )
    log(f"ingest: {report.inserted} new, {report.updated} changed, {report.unchanged} unchanged documents")
    embedded = Embedder(db, settings).embed_pending(
        progress=progress.enabled, progress_interval=progress.interval
    )
    log(f"embed: {embedded.written} chunks embedded in {embedded.seconds:.0f}s")
    return _stored_corpus(db, settings, source)


def _stored_corpus(db: Database, settings: Settings, source: str) -> _Corpus:
    from medpg.embedding import article_model_identity

    with db.connect() as conn:
        external = dict(
            conn.execute(
                "SELECT id, external_id FROM medpg.documents WHERE source = %s", (source,)
            ).fetchall()
        )
        others = _scalar(conn, "SELECT EXISTS (SELECT 1 FROM medpg.documents WHERE source <> %s)", source)
        space_model = sql.embedding_space_model(conn)
        chunks_embedded = _scalar(
            conn,
            "SELECT count(*) FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id "
            "WHERE d.source = %s AND c.embedding_model = %s",
            source,
            space_model,
        )
        conn.rollback()
    if space_model != article_model_identity(settings):
        raise InputError(
            f"the stored embeddings are from {space_model!r}, not the configured article model; run `medpg embed`"
        )
    # Other data in the same database must not answer these queries; one source alone needs no filter.
    filters = Filters(sources=(source,)) if others else Filters()
    return _Corpus(source, external, filters, space_model, int(chunks_embedded))


def _encode_queries(
    db: Database, settings: Settings, data: BeirData, max_queries: int | None, *, log: Callable[[str], None]
) -> _Queries:
    """The judged queries (the first ``max_queries`` by id), encoded once for every system, with the
    active query adaptation applied as search applies it."""
    from medpg.encoders import load_query_encoder
    from medpg.learning.active import lookup

    qids = sorted(data.queries)[:max_queries] if max_queries else sorted(data.queries)
    texts = [data.queries[q] for q in qids]
    t0 = time.perf_counter()
    encoder = load_query_encoder(settings)
    embeddings = encoder.encode_queries(texts)
    with db.connect() as conn:
        adaptation = lookup(conn, db, encoder.model_name)
        conn.rollback()
    if adaptation is not None:
        embeddings = adaptation.apply(embeddings)
        log(f"query adaptation {adaptation.id} applied (medpg learn)")
    log(f"encoded {len(qids)} queries in {time.perf_counter() - t0:.1f}s")
    return _Queries(qids, texts, embeddings, {q: data.qrels[q] for q in qids}, adaptation)


def _choose_systems(settings: Settings, names: Sequence[str] | None) -> list[System]:
    """The systems named (all by default); the rerank system only when a cross-encoder is configured."""
    from medpg.encoders import load_cross_encoder

    # Loading it is the check that the configured cross-encoder is there.
    cross = load_cross_encoder(settings) if settings.rerank_top_k > 0 else None
    chosen = default_systems(settings, cross is not None)
    if not names:
        return chosen
    known = {s.name for s in chosen}
    unknown = [s for s in names if s not in known]
    if unknown:
        raise InputError(f"unknown system(s) {unknown}; known: {sorted(known)}")
    return [s for s in chosen if s.name in names]


def _run_system(
    db: Database,
    settings: Settings,
    system: System,
    corpus: _Corpus,
    queries: _Queries,
    progress: _Progress | None = None,
) -> _Run:
    """Every query through ``system``: the rerank system through search(), the others the SQL call."""
    cfg = settings.with_changes(**system.overrides)
    shown = progress or _Progress(False, DEFAULT_INTERVAL)
    with shown.bar(len(queries.ids), desc=system.name, unit="queries") as bar:
        if system.rerank:
            return _run_with_rerank(db, cfg, system, corpus, queries, bar.update)
        return _run_sql(db, cfg, system, corpus, queries, bar.update)


def _run_with_rerank(
    db: Database,
    cfg: Settings,
    system: System,
    corpus: _Corpus,
    queries: _Queries,
    done: Callable[[int], object] = lambda _n: None,
) -> _Run:
    ranking: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    for qid, text, emb in queries.rows():
        response = search(
            text,
            k=K_FETCH,
            mode=system.mode,
            lexical=system.lexical,
            fusion=system.fusion,
            rerank=True,
            filters=corpus.filters,
            db=db,
            settings=cfg,
            query_embedding=emb,
        )
        latencies.append(response.timings_ms.get("sql", 0.0) + response.timings_ms.get("rerank", 0.0))
        ranking[qid] = _ranks_as_scores(r.external_id for r in response.results)
        done(1)
    return _Run(ranking, latencies, "SQL call + rerank (top 100)")


def _run_sql(
    db: Database,
    cfg: Settings,
    system: System,
    corpus: _Corpus,
    queries: _Queries,
    done: Callable[[int], object] = lambda _n: None,
) -> _Run:
    from medpg.learning.active import fusion_weights

    weights = fusion_weights(cfg, queries.adaptation)
    scored = search_params(
        cfg, k=K_FETCH, mode=system.mode, lexical=system.lexical, fusion=system.fusion, weights=weights
    )
    timed = search_params(
        cfg, k=K_TIMED, mode=system.mode, lexical=system.lexical, fusion=system.fusion, weights=weights
    )
    ranking: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    with db.connect() as conn:
        for _, text, emb in list(queries.rows())[:5]:  # warm the plan caches
            sql.hybrid_search(conn, text, emb if system.mode != "lexical" else None, timed, corpus.filters)
        for qid, text, emb in queries.rows():
            vector = emb if system.mode != "lexical" else None
            # Timed: the call a user waits for (top 10 with explanations); scored: the top 100.
            latencies.append(_call_ms(sql.hybrid_search, conn, text, vector, timed, corpus.filters))
            rows = sql.hybrid_search(conn, text, vector, scored, corpus.filters)
            ids = corpus.external_ids
            ranking[qid] = _ranks_as_scores(ids[r.document_id] for r in rows if r.document_id in ids)
            done(1)
        conn.rollback()
    return _Run(ranking, latencies, "SQL call (top 10)")


def _call_ms(call: Callable[..., object], *args: Any) -> float:
    """Wall-clock milliseconds of ``call(*args)``."""
    start = time.perf_counter()
    call(*args)
    return (time.perf_counter() - start) * 1000


def _ranks_as_scores(external_ids: Iterable[str]) -> dict[str, float]:
    # Scores from ranks: ranx then keeps exactly the order the search returned.
    return {ext: float(K_FETCH - i) for i, ext in enumerate(external_ids)}


def _score_system(system: System, queries: _Queries, run: _Run) -> SystemResult:
    """The metrics and latency percentiles of one system's run."""
    metrics = _metrics(queries.qrels, run.ranking)
    return SystemResult(
        name=system.name,
        ndcg10=metrics["ndcg@10"],
        mrr10=metrics["mrr@10"],
        recall100=metrics["recall@100"],
        p50_ms=_percentile(run.latencies_ms, 50),
        p95_ms=_percentile(run.latencies_ms, 95),
        latency_note=run.latency_note,
        settings={
            "mode": system.mode,
            "lexical": system.lexical,
            "fusion": system.fusion,
            "rerank": system.rerank,
            **system.overrides,
        },
    )


def _build_report(
    db: Database,
    settings: Settings,
    data: BeirData,
    split: str,
    corpus: _Corpus,
    queries: _Queries,
    results: list[SystemResult],
) -> EvalReport:
    """The report: the results and how they were made (command, machine, settings)."""
    from medpg.learning.active import fusion_weights

    dense_weight, lexical_weight = fusion_weights(settings, queries.adaptation)
    return EvalReport(
        dataset=data.name,
        split=split,
        queries=len(queries.ids),
        documents=len(corpus.external_ids),
        chunks_embedded=corpus.chunks_embedded,
        model=corpus.model,
        command=_command(),
        machine=_machine(db),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={
            **{k: getattr(settings, k) for k in REPORTED_SETTINGS},
            "dense_weight": dense_weight,
            "lexical_weight": lexical_weight,
            "query_adaptation": queries.adaptation.id if queries.adaptation else None,
        },
        systems=results,
    )


def _command() -> str:
    env = " ".join(
        f"{k}={shlex.quote(v)}"
        for k, v in sorted(medpg_environment().items())
        if "URL" not in k
    )
    args = " ".join(shlex.quote(a) for a in ["medpg", *sys.argv[1:]])
    return f"{env} {args}".strip()


def render_markdown(report: EvalReport, plot: str | None = None) -> str:
    """The table and how it was made, as Markdown; ``plot``: the PNG's path relative to the table."""
    lines = [
        f"# medpg eval: {report.dataset} ({report.split} split)",
        "",
        f"- Command: `{report.command}`",
        f"- Machine: {report.machine}",
        f"- Date: {report.created_at}",
        f"- Data: {report.documents:,} documents, {report.chunks_embedded:,} chunks embedded with "
        f"`{report.model}`, {report.queries} judged queries",
        "- Settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()),
        "- Metrics: ranx (nDCG@10 with linear gains as trec_eval, MRR@10, Recall@100) on each system's top 100; "
        "latency: one `medpg.hybrid_search` call per query for the top 10 with explanations (query encoding "
        "excluded), p50/p95 over the queries after 5 warm-up calls",
        "- " + _significance_note(report),
        "",
        "| system | nDCG@10 | MRR@10 | Recall@100 | p50 ms | p95 ms "
        "| Δ nDCG@10 | p nDCG@10 | W/T/L nDCG@10 | Δ Recall@100 | p Recall@100 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.systems:
        lines.append(
            f"| {s.name} | {s.ndcg10:.4f} | {s.mrr10:.4f} | {s.recall100:.4f} | {s.p50_ms:.2f} | {s.p95_ms:.2f} "
            f"| {_versus(s.vs_default)} |"
        )
    if plot:
        lines += ["", f"![nDCG@10 and Recall@100 of each system]({plot})"]
    lines.append("")
    return "\n".join(lines)


def _significance_note(report: EvalReport) -> str:
    sig = report.significance
    if sig is None:
        return "Against the default: not computed (the default system was not among those run)"
    return (
        f"Against the default (`{sig['baseline']}`): Δ is the system's mean minus the default's over the "
        f"same {sig['queries']} queries; p from the {sig['test']}, adjusted by {sig['correction']} "
        f"(raw p in the JSON); `*` marks a difference significant at {sig['alpha']} after the adjustment; "
        "W/T/L: queries where the system's nDCG@10 is higher than / equal to / lower than the default's"
    )


def _versus(vs: dict[str, MetricComparison] | None) -> str:
    """The comparison cells of a row: Δ, p and W/T/L on nDCG@10, Δ and p on Recall@100."""
    if vs is None:
        return " | ".join(["—"] * 5)
    ndcg, recall = vs["ndcg@10"], vs["recall@100"]
    return " | ".join(
        [
            _delta(ndcg),
            _p(ndcg.p_holm),
            f"{ndcg.wins}/{ndcg.ties}/{ndcg.losses}",
            _delta(recall),
            _p(recall.p_holm),
        ]
    )


def _delta(c: MetricComparison) -> str:
    return f"{c.delta:+.4f}{' *' if c.significant else ''}"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.0001" if p < 0.0001 else f"{p:.4f}"


__all__ = [
    "BeirData",
    "EvalReport",
    "System",
    "SystemResult",
    "compare_to_default",
    "default_systems",
    "evaluate_dataset",
    "load_beir",
    "render_markdown",
]
