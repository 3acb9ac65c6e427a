"""Ingest throughput without embedding: NFCorpus replicated to N documents.

Writes a JSON Lines file with the NFCorpus documents repeated (ids suffixed with the copy
number) and ingests it into a fresh database on the embedded PostgreSQL, with the same code
path as `medpg ingest`. Reports documents/s for the first load and for a re-ingest of the
unchanged file, median over --repeat runs.

    python benchmarks/ingest.py --docs 100000 --repeat 3 --out benchmarks/results/ingest.md
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "nfcorpus" / "corpus.jsonl"


def replicate(corpus: Path, n_docs: int, out: Path) -> int:
    docs = [orjson.loads(line) for line in corpus.read_bytes().splitlines() if line.strip()]
    written = 0
    with out.open("wb") as fh:
        copy = 0
        while written < n_docs:
            for d in docs:
                if written >= n_docs:
                    break
                fh.write(orjson.dumps({**d, "_id": f"{d['_id']}-{copy}"}) + b"\n")
                written += 1
            copy += 1
    return written


def run_once(path: Path, n_docs: int, batch_size: int, work: Path) -> tuple[float, float, int]:
    from medpg.config import Settings
    from medpg.db import Database, migrate
    from medpg.ingest import ingest_file

    data_dir = work / f"pg-{time.monotonic_ns()}"
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        model_profile="minilm",  # type: ignore[call-arg]
        ingest_batch_size=batch_size,
    )
    db = Database(settings)
    migrate.upgrade(db)
    try:
        first = ingest_file(db, settings, path, source="bench", progress=False)
        second = ingest_file(db, settings, path, source="bench", progress=False)
        assert first.inserted == n_docs and second.unchanged == n_docs, (first, second)
        return first.docs_per_second, second.docs_per_second, first.chunks_written
    finally:
        db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None, help="Write a markdown result here.")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medpg-bench-ingest-"))
    try:
        path = work / "corpus.jsonl"
        n = replicate(args.corpus, args.docs, path)
        size_mb = path.stat().st_size / 1e6
        firsts, seconds = [], []
        chunks = 0
        for i in range(args.repeat):
            a, b, chunks = run_once(path, n, args.batch_size, work)
            firsts.append(a)
            seconds.append(b)
            print(
                f"run {i + 1}: first load {a:,.0f} docs/s, re-ingest (unchanged) {b:,.0f} docs/s", flush=True
            )
        report = "\n".join(
            [
                "# Ingest throughput (no embedding)",
                "",
                "```",
                "python " + " ".join(["benchmarks/ingest.py", *sys.argv[1:]]),
                "```",
                "",
                f"- corpus: NFCorpus replicated to {n:,} documents ({size_mb:,.0f} MB JSON Lines), "
                f"{chunks:,} chunks; batch size {args.batch_size}",
                f"- machine: {platform.machine()}, {platform.python_version()}, "
                f"{__import__('os').cpu_count()} cores; embedded PostgreSQL 18 + pgvector, fresh database per run",
                f"- runs: {args.repeat}",
                "",
                "| phase | median documents/s | runs |",
                "|---|---:|---|",
                f"| first load (insert, chunk, tsvector + GIN) | {statistics.median(firsts):,.0f} | "
                + ", ".join(f"{x:,.0f}" for x in firsts)
                + " |",
                f"| re-ingest, all unchanged | {statistics.median(seconds):,.0f} | "
                + ", ".join(f"{x:,.0f}" for x in seconds)
                + " |",
                "",
            ]
        )
        print(report)
        if args.out:
            args.out.write_text(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
