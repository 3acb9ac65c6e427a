"""BM25 query latency at scale: the NFCorpus test queries through ``medpg.bm25_search``.

NFCorpus replicated to --docs documents is ingested; the queries run as ingested (blocks built
batch by batch by the triggers) and again after ``medpg.rebuild_lexical_index()``; documents and
scores must be equal, and the two latencies say whether incremental blocks cost readers anything.

    python benchmarks/bm25_scale.py --docs 100000 --rounds 3 --out benchmarks/results/bm25_scale.md

The committed ``bm25_scale.md`` compared blocks with one row per posting (the layout of revision
0005); that comparison ran with this script at commit e19e0c2, when revision 0005 still installed
its own search functions.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
NFCORPUS = REPO.parent / "shared" / "data" / "nfcorpus"
SQL = "SELECT document_id, score FROM medpg.bm25_search(%s, 100, %s, %s, %s)"


def run_queries(
    db: object, texts: list[str], rounds: int
) -> tuple[float, float, list[list[tuple[int, float]]]]:
    settings = db.settings  # type: ignore[attr-defined]
    params = (settings.bm25_k1, settings.bm25_b, settings.bm25_title_weight)
    with db.connect() as conn:  # type: ignore[attr-defined]
        conn.execute("ANALYZE")
        results = [conn.execute(SQL, (t, *params)).fetchall() for t in texts]  # warm-up, and the answers
        times = []
        for _ in range(rounds):
            for t in texts:
                started = time.perf_counter()
                conn.execute(SQL, (t, *params)).fetchall()
                times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), results


def same_results(a: list[list[tuple[int, float]]], b: list[list[tuple[int, float]]]) -> bool:
    return all(
        [d for d, _ in x] == [d for d, _ in y]
        and np.allclose([s for _, s in x], [s for _, s in y], rtol=1e-9)
        for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    sys.path.insert(0, str(REPO / "benchmarks"))
    from ingest import replicate

    from medpg import schema
    from medpg.config import Settings
    from medpg.db import Database, migrate
    from medpg.evaluation import load_beir
    from medpg.ingest import ingest_file

    texts = list(load_beir(NFCORPUS, "test").queries.values())
    work = Path(tempfile.mkdtemp(prefix="medpg-bench-bm25-"))
    rows = []
    try:
        path = work / "corpus.jsonl"
        n = replicate(NFCORPUS / "corpus.jsonl", args.docs, path)
        settings = Settings(_env_file=None, data_dir=work / "pg", model_profile="minilm")  # type: ignore[call-arg]
        db = Database(settings)
        schema.upgrade(db)
        ingest_file(db, settings, path, source="bench", progress=False)
        head = migrate.current_revision(db)
        reference = None
        for label, rebuild in ((f"{head}: blocks as ingested", False), (f"{head}: blocks rebuilt", True)):
            if rebuild:
                with db.connect() as conn:
                    conn.execute("SELECT medpg.rebuild_lexical_index()")
                    conn.commit()
            p50, p95, results = run_queries(db, texts, args.rounds)
            equal = reference is None or same_results(reference, results)
            reference = reference or results
            rows.append((label, p50, p95, equal))
            print(f"{label}: p50 {p50:.2f} ms, p95 {p95:.2f} ms, same results: {equal}", flush=True)
        db.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = "\n".join(
        [
            "# BM25 latency at scale",
            "",
            "```",
            "python " + " ".join(["benchmarks/bm25_scale.py", *sys.argv[1:]]),
            "```",
            "",
            f"- corpus: NFCorpus replicated to {n:,} documents (ingested by `medpg.ingest`, batches of 1,000)",
            f"- queries: the {len(texts)} NFCorpus test queries x {args.rounds} rounds after a warm-up, "
            "`medpg.bm25_search(q, 100)`, one connection",
            f"- machine: {platform.machine()}, Python {platform.python_version()}, "
            f"{__import__('os').cpu_count()} cores; embedded PostgreSQL 18",
            "",
            "| schema | p50 ms | p95 ms | same documents and scores as the first row |",
            "|---|---:|---:|---|",
            *(
                f"| {label} | {p50:.2f} | {p95:.2f} | {'yes' if eq else 'NO'} |"
                for label, p50, p95, eq in rows
            ),
            "",
        ]
    )
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
