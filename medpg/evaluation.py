"""Evaluate medpg's retrieval systems on a BEIR-format data set (nDCG@10, MRR@10, Recall@100, latency).

The data set is ingested and embedded first if needed (both are idempotent: unchanged documents
and current vectors are skipped), queries are encoded once, then every system runs every query
through the same SQL function the product uses (``medpg.hybrid_search``). Metrics come from ranx;
latency is the SQL call alone (query encoding excluded), p50/p95 over the queries.

Tune on dev or train (``--split dev``), report test.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import InputError
from medpg.retrieval import sql
from medpg.retrieval.pipeline import search, search_params
from medpg.retrieval.types import Filters

K_FETCH = 100  # results scored per query (Recall@100)
K_TIMED = 10  # results in the timed call


@dataclass(frozen=True)
class System:
    """One configuration to evaluate: a mode, a lexical scorer, a fusion, and setting overrides."""

    name: str
    mode: str
    lexical: str = "bm25"
    fusion: str = "weighted"
    rerank: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


def default_systems(settings: Settings, rerank_available: bool) -> list[System]:
    """Every configured system: each lexical scorer alone, dense alone, hybrids, + rerank when possible."""
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
            overrides={"dense_weight": 1.0, "lexical_weight": 1.0},
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
            },
        ),
        System(
            "hybrid weighted (ts_rank + dense)",
            "hybrid",
            "ts_rank",
            "weighted",
            overrides={"ts_rank_cover_density": False, "ts_rank_normalization": 0},
        ),
        System(f"hybrid {settings.fusion} (bm25 + dense) (default)", "hybrid", "bm25", settings.fusion),
    ]
    if rerank_available:
        systems.append(
            System(
                f"hybrid {settings.fusion} (bm25 + dense) + rerank",
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

    # ranx needs every judged query in the run; an empty result scores 0.
    filled = {q: (run.get(q) or {"__no_result__": 0.0}) for q in qrels}
    scores = ranx_evaluate(
        Qrels(qrels), Run(filled), ["ndcg@10", "mrr@10", "recall@100"], make_comparable=True
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


def evaluate_dataset(
    db: Database,
    settings: Settings,
    dataset_dir: Path,
    *,
    split: str = "test",
    systems: Sequence[str] | None = None,
    max_queries: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> EvalReport:
    """Ingest and embed ``dataset_dir`` if needed, then run and score every system."""
    from medpg.db import check_schema
    from medpg.embedding import Embedder, article_model_identity
    from medpg.encoders import load_cross_encoder, load_query_encoder
    from medpg.ingest import default_source, ingest_file

    data = load_beir(dataset_dir, split)
    check_schema(db)
    source = default_source(data.corpus)
    report = ingest_file(db, settings, data.corpus, source=source, progress=progress)
    log(f"ingest: {report.inserted} new, {report.updated} changed, {report.unchanged} unchanged documents")
    embedded = Embedder(db, settings).embed_pending(progress=progress)
    log(f"embed: {embedded.written} chunks embedded in {embedded.seconds:.0f}s")

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

    qids = sorted(data.queries)[:max_queries] if max_queries else sorted(data.queries)
    qrels = {q: data.qrels[q] for q in qids}
    texts = [data.queries[q] for q in qids]
    t0 = time.perf_counter()
    embeddings = load_query_encoder(settings).encode_queries(texts)
    log(f"encoded {len(qids)} queries in {time.perf_counter() - t0:.1f}s")

    cross = load_cross_encoder(settings) if settings.rerank_top_k > 0 else None
    chosen = default_systems(settings, cross is not None)
    if systems:
        names = {s.name for s in chosen}
        unknown = [s for s in systems if s not in names]
        if unknown:
            raise InputError(f"unknown system(s) {unknown}; known: {sorted(names)}")
        chosen = [s for s in chosen if s.name in systems]

    results: list[SystemResult] = []
    for system in chosen:
        cfg = settings.model_copy(update=system.overrides)
        run: dict[str, dict[str, float]] = {}
        latencies: list[float] = []
        if system.rerank:
            for qid, text, emb in zip(qids, texts, embeddings, strict=True):
                response = search(
                    text,
                    k=K_FETCH,
                    mode=system.mode,
                    lexical=system.lexical,
                    fusion=system.fusion,
                    rerank=True,
                    filters=filters,
                    db=db,
                    settings=cfg,
                    query_embedding=emb,
                )
                latencies.append(response.timings_ms.get("sql", 0.0) + response.timings_ms.get("rerank", 0.0))
                run[qid] = {r.external_id: float(K_FETCH - i) for i, r in enumerate(response.results)}
            note = "SQL call + rerank (top 100)"
        else:
            params = search_params(
                cfg, k=K_FETCH, mode=system.mode, lexical=system.lexical, fusion=system.fusion
            )
            timed = search_params(
                cfg, k=K_TIMED, mode=system.mode, lexical=system.lexical, fusion=system.fusion
            )
            with db.connect() as conn:
                for text, emb in list(zip(texts, embeddings, strict=True))[:5]:  # warm the plan caches
                    sql.hybrid_search(conn, text, emb if system.mode != "lexical" else None, timed, filters)
                for qid, text, emb in zip(qids, texts, embeddings, strict=True):
                    vector = emb if system.mode != "lexical" else None
                    # Timed: the call a user waits for (top 10 with explanations); scored: the top 100.
                    start = time.perf_counter()
                    sql.hybrid_search(conn, text, vector, timed, filters)
                    latencies.append((time.perf_counter() - start) * 1000)
                    rows = sql.hybrid_search(conn, text, vector, params, filters)
                    # Scores from ranks: ranx then keeps exactly the order the SQL returned.
                    run[qid] = {
                        external[r.document_id]: float(K_FETCH - i)
                        for i, r in enumerate(rows)
                        if r.document_id in external
                    }
                conn.rollback()
            note = "SQL call (top 10)"
        metrics = _metrics(qrels, run)
        result = SystemResult(
            name=system.name,
            ndcg10=metrics["ndcg@10"],
            mrr10=metrics["mrr@10"],
            recall100=metrics["recall@100"],
            p50_ms=_percentile(latencies, 50),
            p95_ms=_percentile(latencies, 95),
            latency_note=note,
            settings={
                "mode": system.mode,
                "lexical": system.lexical,
                "fusion": system.fusion,
                "rerank": system.rerank,
                **system.overrides,
            },
        )
        log(f"{system.name}: nDCG@10 {result.ndcg10:.4f}, p50 {result.p50_ms:.2f} ms")
        results.append(result)

    keys = (
        "model_profile",
        "candidates",
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
    return EvalReport(
        dataset=data.name,
        split=split,
        queries=len(qids),
        documents=len(external),
        chunks_embedded=int(chunks_embedded),
        model=space_model,
        command=_command(),
        machine=_machine(db),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={k: getattr(settings, k) for k in keys},
        systems=results,
    )


def _command() -> str:
    env = " ".join(
        f"{k}={shlex.quote(v)}"
        for k, v in sorted(os.environ.items())
        if k.startswith("MEDPG_") and "URL" not in k
    )
    args = " ".join(shlex.quote(a) for a in ["medpg", *sys.argv[1:]])
    return f"{env} {args}".strip()


def render_markdown(report: EvalReport) -> str:
    """The table and how it was made, as Markdown."""
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
        "",
        "| system | nDCG@10 | MRR@10 | Recall@100 | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in report.systems:
        lines.append(
            f"| {s.name} | {s.ndcg10:.4f} | {s.mrr10:.4f} | {s.recall100:.4f} | {s.p50_ms:.2f} | {s.p95_ms:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


__all__ = [
    "BeirData",
    "EvalReport",
    "System",
    "SystemResult",
    "default_systems",
    "evaluate_dataset",
    "load_beir",
    "render_markdown",
]
