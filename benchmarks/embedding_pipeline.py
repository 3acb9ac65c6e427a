"""How much of the encoder's throughput survives the embedding pipeline (claim → encode → write)?

Question: ``medpg.embedding`` claims chunks with FOR UPDATE SKIP LOCKED, encodes them, and writes
the vectors back (hash and lease checks, HNSW index insert). Is that bookkeeping cheap next to
encoding? Target: the pipeline keeps at least 90% of the bare encoder's chunks/s.

Method: ingest N NFCorpus documents into a fresh database on the embedded PostgreSQL, then for
each round (alternating, after a warm-up):
  * bare: ``encoder.encode_documents`` on the same chunks (titles + texts read once from the
    database), in calls of MEDPG_EMBED_CLAIM_SIZE chunks (what one claim holds) and in one call
    for all chunks (the encoder's best case: length-sorted batches over everything);
  * pipeline: every chunk's vector cleared, VACUUM, then ``Embedder.embed_pending()`` (the code
    the worker and ``medpg embed`` run) times claim → encode → write for all chunks.
Reports medians of the rounds and writes ``benchmarks/results/embedding_pipeline.md``.

    python benchmarks/embedding_pipeline.py --docs 400 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import psycopg

from medpg import schema
from medpg.config import Settings
from medpg.db import Database
from medpg.embedding import Embedder
from medpg.encoders import load_article_encoder
from medpg.ingest import ingest_file

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work"
RESULT = ROOT / "results" / "embedding_pipeline.md"


def prepare(settings: Settings, docs: int) -> Database:
    """A fresh benchmark database holding the first ``docs`` NFCorpus documents, chunked."""
    db = Database(settings)
    url = db.url
    admin = url.set(database="postgres", drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{settings.embedded_database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{settings.embedded_database}"')
    db.dispose()
    db = Database(settings)
    schema.upgrade(db)
    db.dispose()  # new connections register pgvector (the extension exists now)
    db = Database(settings)
    corpus = settings.datasets_dir / "nfcorpus" / "corpus.jsonl"
    subset = WORK / f"nfcorpus-{docs}.jsonl"
    WORK.mkdir(parents=True, exist_ok=True)
    with corpus.open(encoding="utf-8") as src, subset.open("w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= docs:
                break
            dst.write(line)
    ingest_file(db, settings, subset, source="nfcorpus", progress=False)
    return db


def chunks_of(db: Database) -> tuple[list[str], list[str]]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT d.title, c.text FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id "
            "ORDER BY c.id"
        ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def reset(db: Database) -> None:
    """Every chunk pending again, dead index entries vacuumed (each round starts alike)."""
    with db.connect() as conn:
        conn.execute(
            "UPDATE medpg.chunks SET embedding = NULL, embedding_model = NULL, embedded_hash = NULL, "
            "embedded_at = NULL, claimed_by = NULL, claimed_at = NULL, attempts = 0"
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE) medpg.chunks")
        conn.autocommit = False


def bare(encoder: object, titles: list[str], texts: list[str], size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), size):
        encoder.encode_documents(titles[i : i + size], texts[i : i + size])  # type: ignore[attr-defined]
    return len(texts) / (time.perf_counter() - started)


def pipeline(db: Database, settings: Settings, encoder: object) -> float:
    reset(db)
    emb = Embedder(db, settings, encoder)  # type: ignore[arg-type]
    report = emb.embed_pending()
    assert report.failed == 0
    return report.written / report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400, help="NFCorpus documents to ingest")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="minilm", help="MEDPG_MODEL_PROFILE (offline: minilm)")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    settings = Settings(
        data_dir=WORK / "data",
        embedded_database="bench_embedding",
        model_profile=args.profile,
    )  # type: ignore[call-arg]
    db = prepare(settings, args.docs)
    encoder = load_article_encoder(settings)
    titles, texts = chunks_of(db)
    n, claim = len(texts), settings.embed_claim_size
    print(f"{args.docs} documents -> {n} chunks; model {encoder.model_name}; claim size {claim}")
    bare(encoder, titles[:claim], texts[:claim], claim)  # warm-up

    runs: dict[str, list[float]] = {"bare_claim": [], "bare_all": [], "pipeline": []}
    for r in range(args.rounds):
        runs["bare_claim"].append(bare(encoder, titles, texts, claim))
        runs["pipeline"].append(pipeline(db, settings, encoder))
        runs["bare_all"].append(bare(encoder, titles, texts, n))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in runs.items()))
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio_claim = med["pipeline"] / med["bare_claim"]
    ratio_all = med["pipeline"] / med["bare_all"]
    verdict = "meets" if min(ratio_claim, ratio_all) >= 0.9 else "MISSES"
    print(
        f"median chunks/s: bare (claim-size calls) {med['bare_claim']:.1f}, bare (one call) "
        f"{med['bare_all']:.1f}, pipeline {med['pipeline']:.1f}; pipeline/bare {ratio_claim:.1%} "
        f"and {ratio_all:.1%} ({verdict} the 90% target)"
    )
    load_after = os.getloadavg()[0]
    if args.no_write:
        return
    cpu = os.cpu_count()
    lines = [
        "# Embedding pipeline vs bare encoder",
        "",
        "Question: does claim → encode → write (`medpg.embedding.Embedder`, the code the Celery worker and",
        "`medpg embed` run) keep at least 90% of the bare article encoder's throughput on the same chunks?",
        "",
        f"- Command: `python benchmarks/embedding_pipeline.py --docs {args.docs} --rounds {args.rounds}"
        f"{'' if args.profile == 'minilm' else ' --profile ' + args.profile}`",
        f"- Data: first {args.docs} NFCorpus documents -> {n} chunks (MEDPG_CHUNK_TOKENS="
        f"{settings.chunk_tokens}); claim size {claim}, encode batch {settings.encode_batch_size}",
        f"- Model: `{encoder.model_name}` ({encoder.dimension}-d, profile {args.profile}), device "
        f"{settings.device} -> CPU; PostgreSQL 18 + pgvector (embedded), HNSW index on the column",
        f"- Machine: {platform.machine()}, {cpu} CPU cores, no GPU; Python {platform.python_version()}",
        f"- Rounds: {args.rounds}, alternating, after a warm-up; medians reported",
        f"- Load average (1 min) before / after: {load_before:.1f} / {load_after:.1f} "
        "(other jobs shared the machine when above ~0.5; the rounds alternate so both paths see it)",
        "",
        "| path | median chunks/s | runs |",
        "|---|---:|---|",
        f"| bare encoder, calls of {claim} chunks | {med['bare_claim']:.1f} | "
        + ", ".join(f"{x:.1f}" for x in runs["bare_claim"])
        + " |",
        f"| bare encoder, one call for all {n} | {med['bare_all']:.1f} | "
        + ", ".join(f"{x:.1f}" for x in runs["bare_all"])
        + " |",
        "| pipeline: claim → encode → write | "
        f"{med['pipeline']:.1f} | " + ", ".join(f"{x:.1f}" for x in runs["pipeline"]) + " |",
        "",
        f"**Pipeline / bare: {ratio_claim:.1%} (claim-size calls), {ratio_all:.1%} (one call) — "
        f"{verdict} the 90% target.**",
        "",
        "Reading: the database side of a claim (one UPDATE … FOR UPDATE SKIP LOCKED) and of a write",
        "(one UPDATE … FROM unnest(ids, hashes, vectors) with hash and lease checks, plus the HNSW",
        "insert, ~1 ms per vector here) is small next to encoding a chunk on this CPU. On a GPU the",
        "encoder is much faster and the HNSW insert becomes the larger share; run this benchmark there",
        "before relying on the ratio. Absolute rates depend on what else runs on the machine;",
        "compare the ratio, and read differences of a few percent (ratios above 100%) as noise.",
        "",
    ]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
