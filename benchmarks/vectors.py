"""Synthetic embeddings with the neighbourhood structure of real ones, for dense search at scale.

Encoding a million passages with MedCPT takes hours on a CPU; what an HNSW benchmark needs is not
the meaning of the vectors but their geometry: many documents crowded around shared topics, a
few very large topics, near-duplicates, and queries that fall among documents rather than far
from all of them. This module makes such vectors, deterministically, from the texts themselves:

- **topics**: ``TOPICS`` (4,096) unit centroids, grouped under ``FIELDS`` (64) broader fields (a
  topic's centroid leans towards its field's, so neighbouring topics exist). A text's topic comes
  from a hash of its *title's* content words (or, without a title, of its first 12 content words),
  mapped through a power law (``POWER``: topic t is drawn with density ~ t^(-1/2)), so texts with
  the same title share a topic and a few topics hold many documents;
- **sub-topics**: one of ``SUBTOPICS`` (8,192) offset vectors, chosen per (topic, min-hash of the
  body's content words): two bodies with Jaccard word overlap J share the sub-topic with
  probability J, so recombined texts that share most sentences sit closer together;
- **per-document noise**: along ``RANK`` (64) strong and ``WEAK_RANK`` (128) weak shared
  directions (real embeddings vary along far fewer directions than their dimension), each row a
  function of the text's own hash (counter-based random numbers), so the same text always gets the
  same vector whatever the order or batch;
- a shared **mean direction** (``MEAN``), as transformer embeddings are anisotropic (every pair
  has a positive cosine);
- the sum is normalised to unit length (float32), so inner product, cosine and L2 agree.

With the default scales, cosine similarity is about 0.92 within a sub-topic, 0.77 within a topic
and 0.28 between unrelated documents (the mean direction's share; more between topics of one field).

Queries (``query_vectors``) are drawn near documents: an anchor vector (a stored document's, or a
synthetic one) plus noise of the same kind with ``QUERY_SPREAD`` scale, normalised. Their exact
top 10 is a handful of sub-topic neighbours among hundreds of same-topic documents at nearly the
same distance, which is what makes recall@10 of an approximate index a real measurement.

For a medpg database, ``load_chunk_vectors`` writes a vector for every chunk (bypassing the
article encoder) and marks the chunks embedded by a named synthetic model, and
``build_hnsw_index`` rebuilds the dense index afterwards, as a first bulk load should:

    from vectors import build_hnsw_index, load_chunk_vectors
    load_chunk_vectors(db, dim=768, seed=0)   # drops the HNSW index, COPYs vectors, marks chunks
    build_hnsw_index(db)                      # m / ef_construction from medpg.embedding_space

    python benchmarks/vectors.py --texts 20000 --dim 768   # prints the similarity structure
"""

from __future__ import annotations

import argparse
import re
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from medpg.embedding.index import INDEX_NAME

if TYPE_CHECKING:
    from medpg.db import Database

TOPICS = 4096
FIELDS = 64
SUBTOPICS = 8192
RANK = 64  # strong noise directions
WEAK_RANK = 128  # weak ones ("isotropic" noise, kept low-rank so a row needs few random numbers)
POWER = 2.0  # topic index = floor(TOPICS * u**POWER), u uniform: sizes fall off as t^(-1/2)
# Norms of each part before the final normalisation (the topic centroid has norm 1).
MEAN = 0.75
SUBTOPIC_SCALE = 0.55
NOISE_LOW_RANK = 0.35
NOISE_ISOTROPIC = 0.2
QUERY_SPREAD = 1.0  # a query's noise relative to a document's
DEFAULT_DIM = 768

_WORD = re.compile(r"[a-z][a-z0-9]{2,}")
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "was",
        "were",
        "are",
        "this",
        "that",
        "from",
        "have",
        "has",
        "had",
        "been",
        "not",
        "but",
        "its",
        "their",
        "they",
        "which",
        "who",
        "all",
        "any",
        "can",
        "may",
        "also",
        "than",
        "then",
        "there",
        "these",
        "those",
        "into",
        "onto",
        "our",
        "out",
        "over",
        "per",
        "such",
        "very",
        "will",
        "would",
        "should",
        "could",
        "his",
        "her",
        "him",
        "she",
        "patient",
        "patients",
    ]
)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# Universal hashing (a*h + b) mod p over 32-bit word hashes, without uint64 overflow.
_P = np.uint64(4294967311)  # the first prime above 2^32
_A = np.uint64(2654435761)
_B = np.uint64(40503)


def model_name(dim: int, seed: int) -> str:
    """The ``embedding_model`` recorded for chunks embedded by this generator."""
    return f"synthetic-{dim}d@seed{seed}"


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A 64-bit mixer: turns structured integers into uniform-looking ones (vectorised)."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _uniform(x: np.ndarray) -> np.ndarray:
    return (_splitmix(x) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


@lru_cache(maxsize=8)
def _basis(dim: int, seed: int) -> dict[str, np.ndarray]:
    """The shared random structure for (dim, seed): mean, fields, topics, sub-topics, noise basis."""
    rng = np.random.default_rng([seed, dim, 0x5EC7025])

    def unit(rows: int) -> np.ndarray:
        v = rng.standard_normal((rows, dim))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    mean = unit(1)[0]
    fields = unit(FIELDS)
    topics = unit(TOPICS) + 0.8 * fields[np.arange(TOPICS) % FIELDS]
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    subtopics = unit(SUBTOPICS) * SUBTOPIC_SCALE
    low_rank, _ = np.linalg.qr(rng.standard_normal((dim, RANK + WEAK_RANK)))  # orthonormal columns
    return {
        "mean": (mean * MEAN).astype(np.float32),
        "topics": topics.astype(np.float32),
        "subtopics": subtopics.astype(np.float32),
        "low_rank": low_rank.T.astype(np.float32),  # (RANK + WEAK_RANK) x dim
    }


def _gaussians(keys: np.ndarray, width: int) -> np.ndarray:
    """A len(keys) x width matrix of standard normals, row i a function of keys[i] alone.

    Counter-based (a hash of key and column, then Box-Muller), so a row never depends on which
    other rows are made with it, and a batch needs no generator per row.
    """
    half = (width + 1) // 2
    cols = np.arange(2 * half, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (_splitmix(keys.astype(np.uint64))[:, None] * np.uint64(0x2545F4914F6CDD1D)) & _MASK64
        u = _uniform(x + cols[None, :])
    u1, u2 = np.maximum(u[:, :half], 1e-300), u[:, half:]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1)
    return z[:, :width].astype(np.float32)


def _noise(keys: np.ndarray, dim: int, seed: int, scale: float) -> np.ndarray:
    """Per-row noise, each row a function of (seed, its key) alone: ``NOISE_LOW_RANK`` along the
    RANK strong directions, ``NOISE_ISOTROPIC`` along the WEAK_RANK weak ones."""
    basis = _basis(dim, seed)["low_rank"]
    z = _gaussians(keys ^ np.uint64(seed * 0x9E3779B1 & 0xFFFFFFFF), RANK + WEAK_RANK)
    z[:, :RANK] *= np.float32(NOISE_LOW_RANK * scale / np.sqrt(RANK))
    z[:, RANK:] *= np.float32(NOISE_ISOTROPIC * scale / np.sqrt(WEAK_RANK))
    return z @ basis


def _normalise(v: np.ndarray) -> np.ndarray:
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32, copy=False)


def assign(
    texts: Sequence[str], titles: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(topic, sub-topic, noise key) of each text: what its vector is made from.

    The topic hashes the title's content words (the first 12 of the text without a title); the
    sub-topic is the body's min-hash within that topic; the noise key hashes title and text.
    """
    n = len(texts)
    topic_key = np.empty(n, dtype=np.uint64)
    body_min = np.empty(n, dtype=np.uint64)
    noise_key = np.empty(n, dtype=np.uint64)
    p, a, b = int(_P), int(_A), int(_B)
    for i, text in enumerate(texts):
        title = titles[i] if titles is not None else ""
        head = (
            _content_words(title)
            if title.strip()
            else _content_words(" ".join(_WORD.findall(text.lower())[:12]))
        )
        topic_key[i] = zlib.crc32(" ".join(sorted(head)).encode()) if head else zlib.crc32(text.encode())
        words = _content_words(text)
        body_min[i] = min(((a * zlib.crc32(w.encode()) + b) % p for w in words), default=int(topic_key[i]))
        noise_key[i] = (zlib.crc32(text.encode()) << 32) | zlib.crc32(title.encode())
    topics = np.minimum((TOPICS * _uniform(topic_key) ** POWER).astype(np.int64), TOPICS - 1)
    subtopics = (
        _splitmix(body_min ^ (topics.astype(np.uint64) << np.uint64(40))) % np.uint64(SUBTOPICS)
    ).astype(np.int64)
    return topics, subtopics, noise_key


def doc_vectors(
    texts: Sequence[str], dim: int = DEFAULT_DIM, seed: int = 0, titles: Sequence[str] | None = None
) -> np.ndarray:
    """Unit float32 vectors (len(texts) x dim) for documents; the same text always gets the same row.

    ``titles`` (one per text, '' for none) choose the topic; without them the text's first words do.
    Passing ids as texts works too: each id then gets its own topic key.
    """
    if dim < RANK + WEAK_RANK:
        raise ValueError(f"dim must be at least {RANK + WEAK_RANK}, got {dim}")
    b = _basis(dim, seed)
    topics, subtopics, keys = assign(texts, titles)
    v = b["topics"][topics] + b["subtopics"][subtopics] + b["mean"]
    v += _noise(keys, dim, seed, 1.0)
    return _normalise(v)


def query_vectors(
    n: int,
    dim: int = DEFAULT_DIM,
    seed: int = 0,
    anchors: np.ndarray | None = None,
    spread: float = QUERY_SPREAD,
) -> np.ndarray:
    """n unit query vectors, each a document-like vector plus noise (``spread`` x a document's).

    ``anchors`` (n x dim): the vectors to draw near, e.g. stored vectors of n sampled chunks, so
    every query lands among real neighbours. Without them each anchor is a synthetic document of a
    power-law-drawn topic. Query noise uses keys apart from every document's.
    """
    rng = np.random.default_rng([seed, 0x0E7])
    b = _basis(dim, seed)
    if anchors is None:
        topics = np.minimum((TOPICS * rng.random(n) ** POWER).astype(np.int64), TOPICS - 1)
        base = b["topics"][topics] + b["subtopics"][rng.integers(SUBTOPICS, size=n)] + b["mean"]
        base += _noise(rng.integers(1 << 62, size=n, dtype=np.uint64), dim, seed, 1.0)
        anchors = _normalise(base)
    anchors = np.asarray(anchors, dtype=np.float32)
    if anchors.shape != (n, dim):
        raise ValueError(f"anchors must be {n} x {dim}, got {anchors.shape}")
    # Anchor rows are unit vectors, documents' noise is ~0.4 of a raw vector's norm of ~1.4.
    keys = (np.uint64(1) << np.uint64(63)) | rng.integers(1 << 62, size=n, dtype=np.uint64)
    return _normalise(anchors + _noise(keys, dim, seed, spread) / 1.4)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Row indices of each query's k nearest vectors by inner product (brute force, best first)."""
    scores = queries @ vectors.T
    k = min(k, vectors.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


# --------------------------------------------------------------------------------------------------
# writing vectors into a medpg database


@dataclass
class LoadReport:
    chunks: int
    model: str
    seconds: float  # reading texts, making vectors, COPY and the UPDATE, all together
    vector_seconds: float  # of which: making the vectors in this process


# The columns medpg.embedding.write's _WRITE_DIRECT sets when a worker stores a vector, minus the
# lease check: no worker runs during a benchmark's bulk load, and a claim/lease round trip per
# batch would cost more than the vectors. The content hash goes into embedded_hash, so the chunks
# are current for medpg (medpg.chunk_vector_outdated is false) exactly as after `medpg embed`.
_MARK_EMBEDDED = """
UPDATE medpg.chunks c
SET embedding = v.embedding, embedding_model = %(model)s, embedded_hash = c.content_hash,
    embedded_at = now(), claimed_by = NULL, claimed_at = NULL, attempts = 0,
    last_error = NULL, failed_at = NULL
FROM bench_vectors v
WHERE c.id = v.id
"""
_CHUNK_TEXTS = """
SELECT c.id, d.title, c.text
FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id
ORDER BY c.id
"""


@contextmanager
def autocommit(conn: Any) -> Iterator[None]:
    """Autocommit for the block (VACUUM, CREATE INDEX), then as before: pooled connections are reused."""
    before = conn.autocommit
    conn.autocommit = True
    try:
        yield
    finally:
        conn.autocommit = before


def load_chunk_vectors(
    db: Database, dim: int = DEFAULT_DIM, seed: int = 0, batch: int = 20_000, drop_index: bool = True
) -> LoadReport:
    """Give every chunk of ``db`` a synthetic vector and mark it embedded by ``model_name(dim, seed)``.

    The embedding space must have dimension ``dim`` and no model yet, or this one (a reload); the
    model is named with medpg's own ``name_first_model``. Vectors are streamed (chunk texts read
    with a server-side cursor, vectors written by binary COPY into a temporary table) and stored by
    one UPDATE. ``drop_index``: drop the HNSW index first, as updating it row by row is far slower
    than building it once afterwards (``build_hnsw_index``).
    """
    from medpg.embedding.space import name_first_model, space_model

    model = model_name(dim, seed)
    started = time.perf_counter()
    vector_seconds = 0.0
    with db.connect() as conn:  # one transaction: the vectors, the marks and the model, or nothing
        conn.autocommit = False
        active = space_model(conn, lock="update")
        if active not in (None, model):
            raise ValueError(f"the embedding space already holds vectors of {active!r}, not {model!r}")
        name_first_model(conn, model, dim)  # checks the dimension against medpg.embedding_space
        if drop_index:
            conn.execute(f"DROP INDEX IF EXISTS medpg.{INDEX_NAME}")
        conn.execute(f"CREATE TEMP TABLE bench_vectors (id bigint, embedding vector({dim})) ON COMMIT DROP")
        # A server-side cursor over the texts; between two fetches, one COPY of the batch's vectors.
        with conn.cursor(name="bench_chunk_texts") as texts, conn.cursor() as cur:
            texts.execute(_CHUNK_TEXTS)
            while rows := texts.fetchmany(batch):
                t0 = time.perf_counter()
                vectors = doc_vectors([r[2] for r in rows], dim, seed, titles=[r[1] for r in rows])
                vector_seconds += time.perf_counter() - t0
                with cur.copy("COPY bench_vectors (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "vector"])
                    for (chunk_id, _, _), v in zip(rows, vectors, strict=True):
                        copy.write_row((chunk_id, v))
        chunks = conn.execute(_MARK_EMBEDDED, {"model": model}).rowcount
        conn.commit()
    return LoadReport(chunks, model, time.perf_counter() - started, vector_seconds)


def build_hnsw_index(
    db: Database,
    *,
    m: int | None = None,
    ef_construction: int | None = None,
    maintenance_work_mem: str | None = None,
    parallel_workers: int | None = None,
) -> float:
    """(Re)build medpg's dense index over chunk vectors; seconds taken.

    This is ``medpg db reindex`` (``medpg.embedding.index.rebuild_dense_index``): the storage and
    parameters ``medpg.embedding_space`` records, ``m`` and ``ef_construction`` overriding them
    (and recorded), ``maintenance_work_mem`` by default sized to hold the graph.
    """
    from medpg.embedding.index import rebuild_dense_index

    build = rebuild_dense_index(
        db,
        m=m,
        ef_construction=ef_construction,
        maintenance_work_mem=maintenance_work_mem,
        parallel_workers=parallel_workers,
    )
    return build.seconds


def stored_vectors(conn: Any, chunk_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, vectors) of the chunks embedded by the space's model, by id (all of them by default)."""
    sql = (
        "SELECT c.id, c.embedding FROM medpg.chunks c JOIN medpg.embedding_space e ON c.embedding_model = e.model "
        "WHERE c.embedding IS NOT NULL"
    )
    params: tuple[Any, ...] = ()
    if chunk_ids is not None:
        sql += " AND c.id = ANY(%s)"
        params = (list(chunk_ids),)
    ids, vecs = [], []
    with conn.cursor(binary=True) as cur:
        for cid, v in cur.execute(sql + " ORDER BY c.id", params):
            ids.append(cid)
            vecs.append(np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32))
    if not ids:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
    return np.asarray(ids, dtype=np.int64), np.stack(vecs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=20_000, help="recombined documents (benchmarks/corpus.py)")
    ap.add_argument("--dim", type=int, default=DEFAULT_DIM)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from corpus import documents

    docs = [d for _, d in documents(args.texts, args.seed)]
    t0 = time.perf_counter()
    v = doc_vectors([d["text"] for d in docs], args.dim, args.seed, titles=[d["title"] for d in docs])
    took = time.perf_counter() - t0
    topics, subs, _ = assign([d["text"] for d in docs], [d["title"] for d in docs])
    rng = np.random.default_rng(1)
    i, j = rng.integers(len(docs), size=(2, 200_000))
    cos = np.einsum("ij,ij->i", v[i], v[j])
    same_topic, same_sub = topics[i] == topics[j], (topics[i] == topics[j]) & (subs[i] == subs[j])
    print(f"{len(docs):,} vectors of {args.dim} dimensions in {took:.1f} s ({len(docs) / took:,.0f}/s)")
    sizes = np.bincount(topics, minlength=TOPICS)
    print(f"topics used {np.count_nonzero(sizes):,}, largest {np.sort(sizes)[::-1][:5].tolist()}")
    sub, topic, other = cos[same_sub & (i != j)], cos[same_topic & ~same_sub], cos[~same_topic]
    print(f"cosine: same sub-topic {sub.mean():.3f}, same topic {topic.mean():.3f}, other {other.mean():.3f}")
    q = query_vectors(200, args.dim, args.seed, anchors=v[:200])
    top = exact_top_k(v, q, 10)
    ranked = np.sort(q @ v.T, axis=1)
    print(
        f"queries: anchor in exact top 10 for {np.mean([k in row for k, row in enumerate(top)]):.2f}; "
        f"10th best ip {ranked[:, -10].mean():.3f}, 100th {ranked[:, -100].mean():.3f}"
    )


if __name__ == "__main__":
    main()
