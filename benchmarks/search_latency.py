"""How fast are medpg's SQL search functions, and what do the BM25 triggers cost writers?

Questions:
  1. Latency of each SQL function on NFCorpus (3,633 documents) with the test queries, query
     encoding excluded: targets BM25 p50 < 2 ms, hybrid p50 < 20 ms.
  2. Cost of keeping BM25 postings and statistics current: documents inserted per second with
     medpg's statement-level triggers enabled vs disabled (everything else identical).

Method: run against the configured database after ``medpg eval <nfcorpus>`` has ingested and
embedded it (e.g. ``MEDPG_DATA_DIR=/tmp/medpg-eval``, same MEDPG_ settings). Queries are encoded
once; each function runs every test query ``--rounds`` times after 10 warm-up calls on one
connection; p50/p95 are over all calls. For (2), the NFCorpus documents are copied into
medpg.documents in statements of 1,000 rows (as ingest batches are), inside a transaction that is
rolled back, alternating triggers disabled / enabled for ``--rounds`` rounds; medians reported.

    MEDPG_DATA_DIR=/tmp/medpg-eval MEDPG_MODEL_PROFILE=minilm python benchmarks/search_latency.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from medpg.config import get_settings
from medpg.db import Database
from medpg.encoders import load_query_encoder
from medpg.evaluation import load_beir

ROOT = Path(__file__).resolve().parent
RESULT = ROOT / "results" / "search_latency.md"

CALLS = {
    "medpg.bm25_search (100 candidates)": "SELECT * FROM medpg.bm25_search(%(q)s, 100, %(k1)s, %(b)s, %(tw)s)",
    "medpg.ts_rank_search (100 candidates)": "SELECT * FROM medpg.ts_rank_search(%(q)s, 100)",
    "medpg.dense_search (100 candidates)": "SELECT * FROM medpg.dense_search(%(e)s, 100, %(ef)s)",
    "medpg.hybrid_search (k=10, bm25, weighted)": (
        "SELECT * FROM medpg.hybrid_search(%(q)s, %(e)s, 10, k1 => %(k1)s, b => %(b)s, title_weight => %(tw)s, "
        "ef_search => %(ef)s)"
    ),
    "medpg.hybrid_search (k=10, ts_rank, rrf)": (
        "SELECT * FROM medpg.hybrid_search(%(q)s, %(e)s, 10, lexical => 'ts_rank', fusion => 'rrf', "
        "ef_search => %(ef)s)"
    ),
}


def latency(
    db: Database, texts: list[str], embeddings: np.ndarray, rounds: int
) -> dict[str, tuple[float, float]]:
    s = db.settings
    out: dict[str, tuple[float, float]] = {}
    with db.connect() as conn:
        for name, sql in CALLS.items():
            args = [
                {
                    "q": t,
                    "e": e,
                    "k1": s.bm25_k1,
                    "b": s.bm25_b,
                    "tw": s.bm25_title_weight,
                    "ef": s.hnsw_ef_search,
                }
                for t, e in zip(texts, embeddings, strict=True)
            ]
            for a in args[:10]:
                conn.execute(sql, a).fetchall()
            times = []
            for _ in range(rounds):
                for a in args:
                    t0 = time.perf_counter()
                    conn.execute(sql, a).fetchall()
                    times.append((time.perf_counter() - t0) * 1000)
            out[name] = (float(np.percentile(times, 50)), float(np.percentile(times, 95)))
            print(f"{name}: p50 {out[name][0]:.2f} ms, p95 {out[name][1]:.2f} ms", flush=True)
        conn.rollback()
    return out


def trigger_cost(db: Database, source: str, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"disabled": [], "enabled": []}
    with db.connect() as conn:
        conn.execute(
            "CREATE TEMP TABLE bench_src AS SELECT title, body, content_hash, row_number() OVER (ORDER BY id) AS rn "
            "FROM medpg.documents WHERE source = %s",
            (source,),
        )
        n = conn.execute("SELECT count(*) FROM bench_src").fetchone()[0]  # type: ignore[index]
        conn.commit()
        for _ in range(rounds):
            for mode in ("disabled", "enabled"):
                if mode == "disabled":
                    conn.execute("ALTER TABLE medpg.documents DISABLE TRIGGER USER")
                t0 = time.perf_counter()
                for lo in range(0, n, 1000):
                    conn.execute(
                        "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
                        "SELECT 'bench', 'b' || rn, title, body, content_hash FROM bench_src "
                        "WHERE rn > %s AND rn <= %s",
                        (lo, lo + 1000),
                    )
                times[mode].append(time.perf_counter() - t0)
                conn.rollback()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "documents": n,
        **{f"{k}_s": v for k, v in med.items()},
        "ms_per_document": (med["enabled"] - med["disabled"]) / n * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, default=None, help="BEIR NFCorpus directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    settings = get_settings()
    dataset = args.dataset or settings.datasets_dir / "nfcorpus"
    data = load_beir(dataset, "test")
    db = Database(settings)
    texts = [data.queries[q] for q in sorted(data.queries)]
    embeddings = load_query_encoder(settings).encode_queries(texts)
    lat = latency(db, texts, embeddings, args.rounds)
    cost = trigger_cost(db, "nfcorpus", args.rounds)
    print(cost)
    with db.connect() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        vec = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]  # type: ignore[index]
    env = " ".join(
        f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MEDPG_") and "URL" not in k
    )
    lines = [
        "# Search latency and BM25 maintenance cost",
        "",
        f"- Command: `{env} python benchmarks/search_latency.py --rounds {args.rounds}` "
        f"(after `medpg eval {dataset}` with the same settings)",
        f"- Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, PostgreSQL {pg}, "
        f"pgvector {vec}, embedded server; other processes may share the CPUs",
        f"- Data: NFCorpus, {cost['documents']:,} documents, {len(texts)} test queries x {args.rounds} rounds; "
        f"bm25 k1={settings.bm25_k1} b={settings.bm25_b} title_weight={settings.bm25_title_weight}, "
        f"hnsw.ef_search={settings.hnsw_ef_search}",
        "",
        "## SQL latency (query encoding excluded)",
        "",
        "| function | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *[f"| {name} | {p50:.2f} | {p95:.2f} |" for name, (p50, p95) in lat.items()],
        "",
        "## Cost of the BM25 triggers for writers",
        "",
        f"Inserting {cost['documents']:,} documents in statements of 1,000 rows (rolled back), median of "
        f"{args.rounds} rounds:",
        "",
        "| triggers | seconds | documents/s |",
        "|---|---:|---:|",
        f"| disabled | {cost['disabled_s']:.2f} | {cost['documents'] / cost['disabled_s']:,.0f} |",
        f"| enabled | {cost['enabled_s']:.2f} | {cost['documents'] / cost['enabled_s']:,.0f} |",
        "",
        f"The triggers add {cost['ms_per_document']:.2f} ms per inserted document.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
