"""Ingest throughput without embedding: NFCorpus replicated to N documents.

Writes a JSON Lines file with the NFCorpus documents repeated (ids suffixed with the copy
number) and ingests it into a fresh database on the embedded PostgreSQL, with the same code
path as `medpg ingest`. Reports documents/s for the first load and for a re-ingest of the
unchanged file, median over --repeat runs.

With --breakdown N it also measures where the time of a document goes, on the first N documents:
CPU in this process (validation, chunking) and server time per document of each part of an
insert. The server parts are measured by inserting the documents in 1,000-row statements inside
a transaction that is rolled back, with parts switched off one at a time: GIN index dropped,
BM25 triggers disabled; the weighted tsvector is timed alone with parallel query off.

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
    from medpg import schema
    from medpg.config import Settings
    from medpg.db import Database
    from medpg.ingest import ingest_file

    data_dir = work / f"pg-{time.monotonic_ns()}"
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        model_profile="minilm",  # type: ignore[call-arg]
        ingest_batch_size=batch_size,
    )
    db = Database(settings)
    schema.upgrade(db)
    try:
        first = ingest_file(db, settings, path, source="bench", progress=False)
        second = ingest_file(db, settings, path, source="bench", progress=False)
        assert first.inserted == n_docs and second.unchanged == n_docs, (first, second)
        return first.docs_per_second, second.docs_per_second, first.chunks_written
    finally:
        db.dispose()


def breakdown(path: Path, n_docs: int, work: Path) -> list[tuple[str, float]]:
    """Microseconds per document of each part of ingest (see the module docstring)."""
    from medpg import schema
    from medpg.chunking import Chunker
    from medpg.config import Settings
    from medpg.db import Database
    from medpg.ingest import Record, read_records

    settings = Settings(_env_file=None, data_dir=work / "pg-breakdown", model_profile="minilm")  # type: ignore[call-arg]
    started = time.perf_counter()
    everything = [r for r in read_records(path, settings, "auto", None) if isinstance(r, Record)]
    validate = (time.perf_counter() - started) * 1e6 / len(everything)
    records = everything[:n_docs]
    chunker = Chunker.from_settings(settings)
    chunker.chunk_many([r.title for r in records[:1000]], [r.body for r in records[:1000]])  # warm
    started = time.perf_counter()
    chunker.chunk_many([r.title for r in records], [r.body for r in records])
    chunking = (time.perf_counter() - started) * 1e6 / n_docs

    db = Database(settings)
    schema.upgrade(db)
    insert = (
        "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
        "SELECT 'b', ext, title, body, '\\x00' FROM stage WHERE i >= %s AND i < %s"
    )

    def timed_insert(conn: object, setup: list[str]) -> float:
        with conn.transaction(force_rollback=True):  # type: ignore[attr-defined]
            for sql in setup:
                conn.execute(sql)  # type: ignore[attr-defined]
            started = time.perf_counter()
            for lo in range(0, n_docs, 1000):
                conn.execute(insert, (lo, lo + 1000))  # type: ignore[attr-defined]
            return (time.perf_counter() - started) * 1e6 / n_docs

    try:
        with db.connect() as conn:
            conn.execute("CREATE TEMP TABLE stage (i integer PRIMARY KEY, ext text, title text, body text)")
            with conn.cursor().copy("COPY stage FROM STDIN") as copy:
                for i, r in enumerate(records):
                    copy.write_row((i, r.external_id, r.title, r.body))
            conn.execute("ANALYZE stage")
            conn.execute("SET max_parallel_workers_per_gather = 0")
            started = time.perf_counter()
            conn.execute(
                "SELECT sum(length(setweight(to_tsvector('english'::regconfig, title), 'A') "
                "|| setweight(to_tsvector('english'::regconfig, body), 'B'))) FROM stage"
            ).fetchone()
            tsvector = (time.perf_counter() - started) * 1e6 / n_docs
            no_triggers = "ALTER TABLE medpg.documents DISABLE TRIGGER USER"
            bare = timed_insert(conn, [no_triggers, "DROP INDEX medpg.documents_tsv_idx"])
            with_gin = timed_insert(conn, [no_triggers])
            full = timed_insert(conn, [])
    finally:
        db.dispose()
    return [
        ("validation (this process)", validate),
        ("chunking (this process, word counts cached)", chunking),
        ("weighted tsvector alone (server)", tsvector),
        ("insert: heap, btrees and tsvector (server)", bare),
        ("GIN index on tsv, pending list on (server)", with_gin - bare),
        ("BM25 blocks and statistics, triggers (server)", full - with_gin),
        ("documents insert in all (server)", full),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None, help="Write a markdown result here.")
    ap.add_argument(
        "--breakdown", type=int, default=0, metavar="N", help="Also time each part on N documents."
    )
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
        if args.breakdown:
            parts = breakdown(path, min(args.breakdown, n), work)
            report += "\n".join(
                [
                    "",
                    f"## Where a document's time goes (first {min(args.breakdown, n):,} documents)",
                    "",
                    "| part | microseconds per document |",
                    "|---|---:|",
                    *(f"| {name} | {us:,.0f} |" for name, us in parts),
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
