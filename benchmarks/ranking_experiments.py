"""Which zero-shot ranking choices hold up? Fusion, chunk aggregation, feedback and BM25 on NFCorpus.

Question: which score normalisation, per-query weighting, chunk-to-document aggregation,
pseudo-relevance feedback, BM25 parameters and candidate depth make medpg's hybrid ranking better
on NFCorpus train and dev *and* keep it at least as good as its better leg on a collection where
one signal is poor? Test is scored once per candidate after the choices are made (``--splits test``).

Method. Everything ranking needs is read once from the embedded database that ``medpg eval`` built
(documents and chunks are never changed):

- the chunk vectors (``medpg.chunks.embedding`` of the current model) and which document each
  belongs to;
- the BM25 postings (``medpg.lexical_postings``: tf, title tf, lengths), the corpus statistics
  (``medpg.lexical_scope_stats()``) and, per query, the lexemes PostgreSQL makes of it
  (``to_tsvector('english', query)``, as ``medpg.bm25_scores`` does);
- the queries of a split, encoded once with medpg's query encoder (``load_query_encoder``).

From these the script computes, per query, the full dense score of every document (cosine of
every chunk; a document's score from its chunks) and the exact BM25 of every document for any
``k1``/``b``/title weight, with the formulas of ``medpg.bm25_scores`` and ``medpg.dense_search``.
``--verify`` checks both against the SQL functions on a sample of dev queries (BM25 equal to
1e-14; dense top 100 against pgvector's HNSW scan: 97% overlap). Candidate lists are then the top
``N`` of each leg, every candidate scored by both legs (full-information fusion, as
``medpg.hybrid_search`` does), and every variant is scored offline with ranx (nDCG@10,
Recall@100). Query vectors are cached in ``--cache`` (npz), as are the corpus arrays.

Held-out checks (the real held-out collections are not in this repository), built from dev
deterministically, for the target "the hybrid never below its better leg":

- ``dev-typo``: every query word of 5 or more letters loses its middle letter ("Breast Cancer
  Cells Feed on Cholesterol" -> "Brest Caner Cels Feed on Choleterol", ``typo``): lexical-poor,
  most words no longer match any lexeme while MiniLM's word pieces keep part of their meaning.
- ``dev-noisy`` / ``dev-noisy2``: each query vector mixed with a seeded random unit vector,
  ``q' = normalize(q + s * r)`` with s = 1 / 2 (the document vectors untouched): dense-poor, a
  weaker encoder.

Modes:

    export MEDPG_DATA_DIR=/tmp/medpg-nfc MEDPG_MODEL_PROFILE=minilm
    # the table of candidates (train and dev decide; test scored once, after the choices)
    python benchmarks/ranking_experiments.py ../shared/data/nfcorpus \
        --splits dev,train,dev-typo,dev-noisy,dev-noisy2,test --groups main,combo --verify --out table.md
    # the held-out checks through the SQL functions themselves
    python benchmarks/ranking_experiments.py ../shared/data/nfcorpus --sql-check \
        --splits dev,dev-typo,dev-noisy,dev-noisy2
    # p50/p95 of the hybrid call, the configurations taking turns; --old-schema also times
    # medpg_old.hybrid_search, the previous functions loaded into a scratch schema
    python benchmarks/ranking_experiments.py ../shared/data/nfcorpus --latency 3 --old-schema
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from medpg.config import get_settings
from medpg.db import Database
from medpg.evaluation import load_beir

ROOT = Path(__file__).resolve().parent
RESULT = ROOT / "results" / "ranking_experiments.md"
DEPTH = 100  # results scored per query (Recall@100), as medpg eval

# --------------------------------------------------------------------------------------------------
# data from the database


@dataclass
class Corpus:
    """The stored corpus as arrays: chunk vectors by document, BM25 postings by lexeme."""

    external: list[str]  # document index -> data set id
    doc_ids: np.ndarray  # document index -> medpg.documents.id
    chunk_vectors: np.ndarray  # (chunks, dim), unit length, sorted by (document, ordinal)
    chunk_doc: np.ndarray  # chunk -> document index
    chunk_starts: np.ndarray  # first chunk of each document (documents without chunks: none here)
    vocab: dict[str, int]
    tf: sp.csr_matrix  # (lexemes, documents)
    tf_title: sp.csr_matrix  # same sparsity as tf
    dl: np.ndarray
    dl_title: np.ndarray
    n_docs: float
    length: float
    title_length: float


def load_corpus(db: Database, cache: Path) -> Corpus:
    path = cache / "corpus.npz"
    if path.exists():
        z = np.load(path, allow_pickle=True)
        vocab = {t: i for i, t in enumerate(z["lexemes"].tolist())}
        shape = (len(vocab), len(z["doc_ids"]))
        tf = sp.csr_matrix((z["tf_data"], z["tf_indices"], z["tf_indptr"]), shape=shape)
        tft = sp.csr_matrix((z["tft_data"], z["tf_indices"], z["tf_indptr"]), shape=shape)
        return Corpus(
            z["external"].tolist(),
            z["doc_ids"],
            z["chunk_vectors"],
            z["chunk_doc"],
            z["chunk_starts"],
            vocab,
            tf,
            tft,
            z["dl"],
            z["dl_title"],
            *z["stats"].tolist(),
        )
    with db.connect() as conn:
        docs = conn.execute("SELECT id, external_id FROM medpg.documents ORDER BY id").fetchall()
        index = {d: i for i, (d, _) in enumerate(docs)}
        rows = conn.execute(
            "SELECT c.document_id, c.embedding FROM medpg.embedding_space e JOIN medpg.chunks c"
            " ON c.embedding_model = e.model WHERE c.embedding IS NOT NULL ORDER BY c.document_id, c.ordinal"
        ).fetchall()
        chunk_doc = np.array([index[r[0]] for r in rows], dtype=np.int64)
        vectors = np.stack([np.asarray(r[1].to_numpy(), dtype=np.float32) for r in rows])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        post = conn.execute(
            "SELECT lexeme, document_id, tf, tf_title FROM medpg.lexical_postings ORDER BY lexeme, document_id"
        ).fetchall()
        lens = dict(
            (r[0], (r[1], r[2]))
            for r in conn.execute("SELECT document_id, dl, dl_title FROM medpg.lexical_documents").fetchall()
        )
        stats = conn.execute(
            "SELECT documents, length, title_length FROM medpg.lexical_scope_stats()"
        ).fetchone()
        conn.rollback()
    assert stats is not None
    lexemes = sorted({p[0] for p in post})
    vocab = {t: i for i, t in enumerate(lexemes)}
    r = np.array([vocab[p[0]] for p in post])
    c = np.array([index[p[1]] for p in post])
    shape = (len(lexemes), len(docs))
    tf = sp.csr_matrix((np.array([p[2] for p in post], dtype=np.float64), (r, c)), shape=shape)
    tft = sp.csr_matrix((np.array([p[3] for p in post], dtype=np.float64), (r, c)), shape=shape)
    tf.sort_indices()
    tft.sort_indices()
    assert np.array_equal(tf.indices, tft.indices) and np.array_equal(tf.indptr, tft.indptr)
    dl = np.array([lens.get(d, (0, 0))[0] for d, _ in docs], dtype=np.float64)
    dlt = np.array([lens.get(d, (0, 0))[1] for d, _ in docs], dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, chunk_doc[1:] != chunk_doc[:-1]])
    assert len(starts) == len(docs), "every document has embedded chunks"
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        external=np.array([e for _, e in docs]),
        doc_ids=np.array([d for d, _ in docs]),
        chunk_vectors=vectors,
        chunk_doc=chunk_doc,
        chunk_starts=starts,
        lexemes=np.array(lexemes),
        tf_data=tf.data,
        tft_data=tft.data,
        tf_indices=tf.indices,
        tf_indptr=tf.indptr,
        dl=dl,
        dl_title=dlt,
        stats=np.array([float(stats[0]), float(stats[1]), float(stats[2])]),
    )
    return load_corpus(db, cache)


@dataclass
class Queries:
    ids: list[str]
    texts: list[str]
    vectors: np.ndarray  # (queries, dim), unit length
    lexemes: list[dict[str, int]]  # lexeme -> qtf, as to_tsvector('english', text)
    qrels: dict[str, dict[str, int]]


def typo(text: str) -> str:
    """Each word of 5+ letters without its middle letter: a lexical-poor query, deterministically."""
    return re.sub(
        r"[A-Za-z]{5,}",
        lambda m: m.group(0)[: len(m.group(0)) // 2] + m.group(0)[len(m.group(0)) // 2 + 1 :],
        text,
    )


def noisy(vectors: np.ndarray, strength: float = 1.0, seed: int = 13) -> np.ndarray:
    """Each query vector mixed with a seeded random unit vector: a weaker dense signal."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(vectors.shape).astype(np.float32)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    out = vectors + strength * r
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def load_queries(db: Database, dataset: Path, split: str, cache: Path) -> Queries:
    base = split.split("-")[0]
    path = cache / f"queries-{split}.npz"
    data = load_beir(dataset, base)
    ids = sorted(data.queries)
    texts = [data.queries[q] for q in ids]
    if split.endswith("-typo"):
        texts = [typo(t) for t in texts]
    if path.exists():
        z = np.load(path, allow_pickle=True)
        vectors = z["vectors"]
    else:
        from medpg.encoders import load_query_encoder

        t0 = time.perf_counter()
        vectors = np.asarray(load_query_encoder(db.settings).encode_queries(texts), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        print(f"{split}: encoded {len(texts)} queries in {time.perf_counter() - t0:.1f}s", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, vectors=vectors)
    if split.endswith("-noisy"):
        vectors = noisy(vectors)
    if split.endswith("-noisy2"):
        vectors = noisy(vectors, 2.0)
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT t.i, u.lexeme, cardinality(u.positions) FROM unnest(%s::text[]) WITH ORDINALITY t(q, i),"
            " unnest(to_tsvector('english'::regconfig, t.q)) u",
            (texts,),
        ).fetchall()
        conn.rollback()
    lexemes: list[dict[str, int]] = [{} for _ in texts]
    for i, lex, qtf in rows:
        lexemes[i - 1][lex] = qtf
    return Queries(ids, texts, vectors, lexemes, {q: data.qrels[q] for q in ids})


# --------------------------------------------------------------------------------------------------
# the two legs, exactly as the SQL computes them


def bm25_matrix(
    corpus: Corpus,
    queries: Queries,
    k1: float,
    b: float,
    tw: float,
    weights: list[dict[str, float]] | None = None,
) -> np.ndarray:
    """BM25 of every document for every query (medpg.bm25_scores' formula), (queries, documents)."""
    n = corpus.n_docs
    avgdl = max((corpus.length + (tw - 1) * corpus.title_length) / max(n, 1), 1e-9)
    tf = corpus.tf.copy()
    tf.data = corpus.tf.data + (tw - 1) * corpus.tf_title.data
    dl = corpus.dl + (tw - 1) * corpus.dl_title
    doc_of = tf.indices
    norm = 1 - b + b * dl[doc_of] / avgdl
    tf.data = tf.data * (k1 + 1) / (tf.data + k1 * norm)
    df = np.diff(corpus.tf.indptr).astype(np.float64)
    idf = np.log(1 + (np.maximum(n - df, 0) + 0.5) / (df + 0.5))
    rows, cols, vals = [], [], []
    source = weights if weights is not None else queries.lexemes
    for i, lex in enumerate(source):
        for term, q in lex.items():
            j = corpus.vocab.get(term)
            if j is not None:
                rows.append(i)
                cols.append(j)
                vals.append(q * idf[j])
    qm = sp.csr_matrix((vals, (rows, cols)), shape=(len(source), len(corpus.vocab)))
    return np.asarray((qm @ tf).todense())


def chunk_similarities(corpus: Corpus, vectors: np.ndarray) -> np.ndarray:
    return vectors @ corpus.chunk_vectors.T  # cosine: both unit length


def doc_scores(corpus: Corpus, sims: np.ndarray, how: str = "max", lam: float = 0.0) -> np.ndarray:
    """A document's dense score from its chunks' similarities."""
    starts = corpus.chunk_starts
    best = np.maximum.reduceat(sims, starts, axis=1)
    if how == "max":
        return best
    counts = np.diff(np.r_[starts, sims.shape[1]])
    if how == "mean":
        return best + lam * np.add.reduceat(sims, starts, axis=1) / counts
    if how == "second":
        # second best (the best itself for one-chunk documents)
        masked = sims.copy()
        arg = np.empty_like(best, dtype=np.int64)
        for j, (s, c) in enumerate(zip(starts, counts, strict=True)):
            arg[:, j] = s + np.argmax(sims[:, s : s + c], axis=1)
        masked[np.arange(sims.shape[0])[:, None], arg] = -np.inf
        second = np.maximum.reduceat(masked, starts, axis=1)
        second = np.where(np.isfinite(second), second, best)
        return best + lam * second
    if how == "lead":
        return best + lam * sims[:, starts]
    raise ValueError(how)


# --------------------------------------------------------------------------------------------------
# fusion of two candidate lists (one query)


@dataclass
class Lists:
    """One query's candidates: the union of the two top-N lists, each scored by both legs."""

    docs: np.ndarray
    d: np.ndarray  # dense score of each candidate
    lx: np.ndarray  # BM25 score (0: no term matches)
    d_rank: np.ndarray  # rank in the dense list (0 = not ranked)
    l_rank: np.ndarray
    coverage: float  # share of the query's idf mass whose lexemes occur in the corpus


def candidates(dense: np.ndarray, lexical: np.ndarray, n: int, coverage: float) -> Lists:
    dtop = np.argsort(-dense, kind="stable")[:n]
    matched = np.flatnonzero(lexical > 0)
    ltop = matched[np.argsort(-lexical[matched], kind="stable")][:n]
    docs = np.union1d(dtop, ltop)
    d_rank = np.zeros(len(docs), dtype=np.int64)
    l_rank = np.zeros(len(docs), dtype=np.int64)
    d_rank[np.searchsorted(docs, dtop)] = np.arange(1, len(dtop) + 1)
    l_rank[np.searchsorted(docs, ltop)] = np.arange(1, len(ltop) + 1)
    return Lists(docs, dense[docs], lexical[docs], d_rank, l_rank, coverage)


def _stats(x: np.ndarray, ranked: np.ndarray) -> tuple[float, float, float, float]:
    v = x[ranked > 0]
    if len(v) == 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(v.min()), float(v.max()), float(v.mean()), float(v.std())


def minmax(x: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    lo, hi, _, _ = _stats(x, ranked)
    if not (ranked > 0).any():
        return np.zeros_like(x)
    if hi > lo:
        return (x - lo) / (hi - lo)
    return (x >= hi).astype(np.float64)


def zscore(x: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    _, _, mu, sd = _stats(x, ranked)
    if not (ranked > 0).any():
        return np.zeros_like(x)
    return (x - mu) / sd if sd > 0 else (x >= mu).astype(np.float64)


def tmm(x: np.ndarray, ranked: np.ndarray, floor: float) -> np.ndarray:
    """Theoretical-min / observed-max (Bruch et al. 2023): (x - floor) / (max - floor)."""
    _, hi, _, _ = _stats(x, ranked)
    if not (ranked > 0).any():
        return np.zeros_like(x)
    return (x - floor) / (hi - floor) if hi > floor else (x >= hi).astype(np.float64)


Fusion = Callable[[Lists], np.ndarray]


def convex(norm: str, wd: float = 0.5, wl: float = 0.5) -> Fusion:
    def f(c: Lists) -> np.ndarray:
        if norm == "minmax":
            return wd * minmax(c.d, c.d_rank) + wl * minmax(c.lx, c.l_rank)
        if norm == "zscore":
            return wd * zscore(c.d, c.d_rank) + wl * zscore(c.lx, c.l_rank)
        if norm == "tmm":
            return wd * tmm(c.d, c.d_rank, -1.0) + wl * tmm(c.lx, c.l_rank, 0.0)
        if norm == "tmm0":
            return wd * tmm(c.d, c.d_rank, 0.0) + wl * tmm(c.lx, c.l_rank, 0.0)
        raise ValueError(norm)

    return f


def rrf(k: int, wd: float = 1.0, wl: float = 1.0) -> Fusion:
    def f(c: Lists) -> np.ndarray:
        return np.where(c.d_rank > 0, wd / (k + c.d_rank), 0.0) + np.where(
            c.l_rank > 0, wl / (k + c.l_rank), 0.0
        )

    return f


def confidence(c: Lists, leg: str, signal: str, m: int = 10) -> float:
    """How sure one leg is for this query, from its own candidate list (no labels)."""
    x, ranked = (c.d, c.d_rank) if leg == "d" else (c.lx, c.l_rank)
    v = np.sort(x[ranked > 0])[::-1]
    if len(v) < 2:
        return 0.0
    mu, sd = v.mean(), v.std()
    if signal == "topz":  # how far the best candidate stands out of its list
        return float((v[0] - mu) / sd) if sd > 0 else 0.0
    if signal == "topmz":  # the same for the mean of the top m
        return float((v[:m].mean() - mu) / sd) if sd > 0 else 0.0
    if signal == "gap":  # top score's gap to the m-th, relative to the list's range
        rng = v[0] - v[-1]
        return float((v[0] - v[min(m, len(v)) - 1]) / rng) if rng > 0 else 0.0
    if signal == "nqc":  # normalized query commitment: std of the top m over the list's mean magnitude
        return float(v[:m].std() / abs(mu)) if mu != 0 else 0.0
    raise ValueError(signal)


def overlap(c: Lists, m: int = 10) -> float:
    return float(np.sum((c.d_rank > 0) & (c.d_rank <= m) & (c.l_rank > 0) & (c.l_rank <= m)) / m)


def adaptive(norm: str, signal: str, cover: bool = False, m: int = 10) -> Fusion:
    """Convex fusion whose weights follow each leg's confidence for this query."""
    base = convex(norm, 1.0, 0.0), convex(norm, 0.0, 1.0)

    def f(c: Lists) -> np.ndarray:
        if signal == "coverage":
            wd, wl = 1.0, c.coverage
        else:
            wd, wl = max(confidence(c, "d", signal, m), 0.0), max(confidence(c, "l", signal, m), 0.0)
            if cover:
                wl *= c.coverage
        if wd + wl <= 0:
            wd = wl = 1.0
        return (wd * base[0](c) + wl * base[1](c)) / (wd + wl)

    return f


def ranking(c: Lists, fused: np.ndarray) -> np.ndarray:
    order = np.lexsort((c.docs, -fused))
    return c.docs[order][:DEPTH]


# --------------------------------------------------------------------------------------------------
# metrics (ranx)


def evaluate(queries: Queries, corpus: Corpus, runs: list[np.ndarray]) -> tuple[float, float]:
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    run = {
        qid: ({corpus.external[d]: float(DEPTH - i) for i, d in enumerate(docs)} or {"__none__": 0.0})
        for qid, docs in zip(queries.ids, runs, strict=True)
    }
    s = ranx_evaluate(Qrels(queries.qrels), Run(run), ["ndcg@10", "recall@100"], make_comparable=True)
    return float(s["ndcg@10"]), float(s["recall@100"])


# --------------------------------------------------------------------------------------------------
# the experiment


@dataclass
class Split:
    name: str
    queries: Queries
    sims: np.ndarray  # chunk similarities
    dense: dict[str, np.ndarray]  # aggregation -> document scores
    bm25: dict[tuple[float, float, float], np.ndarray]
    coverage: np.ndarray


def coverage(corpus: Corpus, queries: Queries) -> np.ndarray:
    """Per query: the idf mass of its lexemes that occur in the corpus over that of all its lexemes.

    A lexeme no document has gets the largest idf (df = 0). 1.0 for a query whose every lexeme
    occurs somewhere; 0 for one without lexemes (BM25 has nothing to say).
    """
    n = corpus.n_docs
    df = np.diff(corpus.tf.indptr).astype(np.float64)
    idf = np.log(1 + (np.maximum(n - df, 0) + 0.5) / (df + 0.5))
    top = math.log(1 + (n + 0.5) / 0.5)
    out = np.zeros(len(queries.ids))
    for i, lex in enumerate(queries.lexemes):
        tot = seen = 0.0
        for term, q in lex.items():
            j = corpus.vocab.get(term)
            w = q * (idf[j] if j is not None else top)
            tot += w
            seen += w if j is not None else 0.0
        out[i] = seen / tot if tot > 0 else 0.0
    return out


BM25_DEFAULT = (2.0, 0.5, 2.0)


def prepare(corpus: Corpus, queries: Queries, name: str) -> Split:
    sims = chunk_similarities(corpus, queries.vectors)
    return Split(
        name,
        queries,
        sims,
        {"max": doc_scores(corpus, sims)},
        {BM25_DEFAULT: bm25_matrix(corpus, queries, *BM25_DEFAULT)},
        coverage(corpus, queries),
    )


def run_fusion(
    split: Split,
    fusion: Fusion | None,
    leg: str = "hybrid",
    n: int = 100,
    dense_key: str = "max",
    bm25_key: tuple[float, float, float] = BM25_DEFAULT,
    dense: np.ndarray | None = None,
    bm25: np.ndarray | None = None,
) -> list[np.ndarray]:
    dmat = split.dense[dense_key] if dense is None else dense
    lmat = split.bm25[bm25_key] if bm25 is None else bm25
    out = []
    for i in range(len(split.queries.ids)):
        if leg == "dense":
            out.append(np.argsort(-dmat[i], kind="stable")[:DEPTH])
            continue
        if leg == "lexical":
            m = np.flatnonzero(lmat[i] > 0)
            out.append(m[np.argsort(-lmat[i][m], kind="stable")][:DEPTH])
            continue
        c = candidates(dmat[i], lmat[i], n, float(split.coverage[i]))
        assert fusion is not None
        out.append(ranking(c, fusion(c)))
    return out


def rm3_weights(
    corpus: Corpus, split: Split, first: list[np.ndarray], fb_docs: int, fb_terms: int, alpha: float
) -> list[dict[str, float]]:
    """RM3: the query's lexemes mixed with the top documents' most likely terms (from the postings)."""
    terms = np.array(sorted(corpus.vocab, key=corpus.vocab.__getitem__))
    tfc = corpus.tf.tocsc()
    dl = np.maximum(corpus.dl, 1)
    out = []
    for i, lex in enumerate(split.queries.lexemes):
        docs = first[i][:fb_docs]
        if len(docs) == 0 or not lex:
            out.append(dict(lex))
            continue
        sub = tfc[:, docs]  # (lexemes, fb_docs)
        sub = sub.multiply(1.0 / dl[docs]).tocsr()
        # document weights: uniform over the feedback set (the scores are on incomparable scales)
        p = np.asarray(sub.sum(axis=1)).ravel() / len(docs)
        top = np.argsort(-p)[:fb_terms]
        tot = p[top].sum()
        qtot = sum(lex.values())
        w: dict[str, float] = {t: alpha * q / qtot for t, q in lex.items()}
        for j in top:
            if p[j] > 0:
                w[terms[j]] = w.get(terms[j], 0.0) + (1 - alpha) * p[j] / tot
        # scale so the original terms keep their qtf magnitude
        out.append({t: v * qtot for t, v in w.items()})
    return out


def rocchio(corpus: Corpus, split: Split, first: list[np.ndarray], fb_docs: int, beta: float) -> np.ndarray:
    """The query vector moved toward the mean of the top documents' best chunks."""
    best = np.empty((len(first), corpus.chunk_vectors.shape[1]), dtype=np.float32)
    counts = np.diff(np.r_[corpus.chunk_starts, len(corpus.chunk_doc)])
    for i, docs in enumerate(first):
        vs = []
        for d in docs[:fb_docs]:
            s, c = corpus.chunk_starts[d], counts[d]
            j = s + int(np.argmax(split.sims[i, s : s + c]))
            vs.append(corpus.chunk_vectors[j])
        best[i] = np.mean(vs, axis=0) if vs else 0
    q = split.queries.vectors + beta * best
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@dataclass
class Row:
    group: str
    name: str
    scores: dict[str, tuple[float, float]]


def experiments(corpus: Corpus, splits: list[Split], groups: set[str]) -> list[Row]:
    rows: list[Row] = []

    def add(group: str, name: str, make: Callable[[Split], list[np.ndarray]]) -> None:
        t0 = time.perf_counter()
        scores = {s.name: evaluate(s.queries, corpus, make(s)) for s in splits}
        rows.append(Row(group, name, scores))
        cells = "  ".join(f"{k} {v[0]:.4f}" for k, v in scores.items())
        print(f"{group:12s} {name:58s} {cells}  ({time.perf_counter() - t0:.1f}s)", flush=True)

    add("legs", "BM25 (k1 2.0, b 0.5, title 2)", lambda s: run_fusion(s, None, "lexical"))
    add("legs", "dense (best chunk)", lambda s: run_fusion(s, None, "dense"))
    add("fusion", "minmax 0.5/0.5 (today's default)", lambda s: run_fusion(s, convex("minmax")))
    if "core" in groups:  # the few first-pass candidates worth a train run (dev figures from "main")
        add(
            "fusion",
            "zscore 0.5/0.5 (CombSUM of z-scores; = DBSF)",
            lambda s: run_fusion(s, convex("zscore")),
        )
        add("fusion", "RRF k=60", lambda s: run_fusion(s, rrf(60)))
        add("adaptive", "minmax, w = gap", lambda s: run_fusion(s, adaptive("minmax", "gap")))
        for s in splits:
            s.dense.setdefault("lead:0.5", doc_scores(corpus, s.sims, "lead", 0.5))
        add(
            "chunks",
            "hybrid minmax, best + 0.5 x lead chunk",
            lambda s: run_fusion(s, convex("minmax"), dense_key="lead:0.5"),
        )
    if "combo" in groups:
        combos(corpus, splits, add, groups)
    if "main" not in groups:
        return rows

    # normalisation
    for w in (0.4, 0.6):
        add(
            "fusion",
            f"minmax {w:.1f}/{1 - w:.1f} (dense/BM25)",
            lambda s, w=w: run_fusion(s, convex("minmax", w, 1 - w)),
        )
    add("fusion", "zscore 0.5/0.5 (CombSUM of z-scores; = DBSF)", lambda s: run_fusion(s, convex("zscore")))
    for w in (0.4, 0.6):
        add("fusion", f"zscore {w:.1f}/{1 - w:.1f}", lambda s, w=w: run_fusion(s, convex("zscore", w, 1 - w)))
    add("fusion", "theoretical-min max (cosine -1, BM25 0)", lambda s: run_fusion(s, convex("tmm")))
    add("fusion", "theoretical-min max (cosine 0, BM25 0)", lambda s: run_fusion(s, convex("tmm0")))
    for k in (10, 60):
        add("fusion", f"RRF k={k}", lambda s, k=k: run_fusion(s, rrf(k)))

    # per-query adaptive weights
    for norm in ("minmax", "zscore"):
        add(
            "adaptive",
            f"{norm}, w_BM25 = query coverage",
            lambda s, norm=norm: run_fusion(s, adaptive(norm, "coverage")),
        )
        for sig in ("topz", "topmz", "gap", "nqc"):
            add(
                "adaptive",
                f"{norm}, w = {sig}",
                lambda s, norm=norm, sig=sig: run_fusion(s, adaptive(norm, sig)),
            )
            add(
                "adaptive",
                f"{norm}, w = {sig}, w_BM25 x coverage",
                lambda s, norm=norm, sig=sig: run_fusion(s, adaptive(norm, sig, cover=True)),
            )

    # chunk scores -> document score
    base = convex("minmax")
    for how, lams in (("second", (0.25, 0.5)), ("mean", (0.25, 0.5, 1.0)), ("lead", (0.25, 0.5))):
        for lam in lams:
            key = f"{how}:{lam}"
            for s in splits:
                s.dense.setdefault(key, doc_scores(corpus, s.sims, how, lam))
            label = {
                "second": "best + {l} x second best",
                "mean": "best + {l} x mean of chunks",
                "lead": "best + {l} x lead chunk",
            }[how].format(l=lam)
            add("chunks", f"dense, {label}", lambda s, key=key: run_fusion(s, None, "dense", dense_key=key))
            add("chunks", f"hybrid minmax, {label}", lambda s, key=key: run_fusion(s, base, dense_key=key))

    # candidate depth
    for n in (50, 200, 400):
        add("depth", f"minmax 0.5/0.5, {n} candidates per leg", lambda s, n=n: run_fusion(s, base, n=n))

    # BM25 parameters
    for params in (
        (1.2, 0.75, 1.0),
        (0.9, 0.4, 1.0),
        (1.2, 0.75, 2.0),
        (2.0, 0.5, 1.0),
        (2.0, 0.5, 3.0),
        (3.0, 0.5, 2.0),
        (1.5, 0.6, 2.0),
        (2.0, 0.3, 2.0),
    ):
        for s in splits:
            s.bm25.setdefault(params, bm25_matrix(corpus, s.queries, *params))
        k1, b, tw = params
        add(
            "bm25",
            f"BM25 k1 {k1}, b {b}, title {tw}",
            lambda s, p=params: run_fusion(s, None, "lexical", bm25_key=p),
        )
        add(
            "bm25",
            f"hybrid minmax, BM25 k1 {k1}, b {b}, title {tw}",
            lambda s, p=params: run_fusion(s, base, bm25_key=p),
        )

    # pseudo-relevance feedback
    firsts = {s.name: run_fusion(s, base) for s in splits}
    bm25_firsts = {s.name: run_fusion(s, None, "lexical") for s in splits}
    dense_firsts = {s.name: run_fusion(s, None, "dense") for s in splits}
    for src, fb in (("BM25", bm25_firsts), ("hybrid", firsts)):
        for fb_docs, fb_terms, alpha in ((5, 10, 0.5), (10, 20, 0.5), (10, 20, 0.7), (5, 20, 0.7)):
            label = f"RM3 from {src} top {fb_docs}, {fb_terms} terms, alpha {alpha}"
            cache_key: dict[str, np.ndarray] = {}

            def expanded(
                s: Split,
                fb: dict[str, list[np.ndarray]] = fb,
                d: int = fb_docs,
                t: int = fb_terms,
                a: float = alpha,
                ck: dict[str, np.ndarray] = cache_key,
            ) -> np.ndarray:
                if s.name not in ck:
                    ck[s.name] = bm25_matrix(
                        corpus, s.queries, *BM25_DEFAULT, weights=rm3_weights(corpus, s, fb[s.name], d, t, a)
                    )
                return ck[s.name]

            add("prf", f"BM25 after {label}", lambda s, e=expanded: run_fusion(s, None, "lexical", bm25=e(s)))
            add(
                "prf",
                f"hybrid minmax, BM25 after {label}",
                lambda s, e=expanded: run_fusion(s, base, bm25=e(s)),
            )
    for src, fb in (("dense", dense_firsts), ("hybrid", firsts)):
        for fb_docs, beta in ((3, 0.5), (5, 0.5), (5, 1.0), (10, 1.0)):
            label = f"Rocchio from {src} top {fb_docs}, beta {beta}"
            ck2: dict[str, np.ndarray] = {}

            def moved(
                s: Split,
                fb: dict[str, list[np.ndarray]] = fb,
                d: int = fb_docs,
                bt: float = beta,
                ck: dict[str, np.ndarray] = ck2,
            ) -> np.ndarray:
                if s.name not in ck:
                    ck[s.name] = doc_scores(
                        corpus, chunk_similarities(corpus, rocchio(corpus, s, fb[s.name], d, bt))
                    )
                return ck[s.name]

            add("prf", f"dense after {label}", lambda s, m=moved: run_fusion(s, None, "dense", dense=m(s)))
            add(
                "prf",
                f"hybrid minmax, dense after {label}",
                lambda s, m=moved: run_fusion(s, base, dense=m(s)),
            )
    return rows


def render(rows: list[Row], split_names: list[str]) -> str:
    head = "| group | candidate | " + " | ".join(f"{s} nDCG@10 | {s} R@100" for s in split_names) + " |"
    sep = "|---|---|" + "---:|---:|" * len(split_names)
    lines = [head, sep]
    for r in rows:
        cells = " | ".join(
            f"{r.scores[s][0]:.4f} | {r.scores[s][1]:.4f}" if s in r.scores else "— | —" for s in split_names
        )
        lines.append(f"| {r.group} | {r.name} | {cells} |")
    return "\n".join(lines)


def verify(db: Database, corpus: Corpus, split: Split, sample: int = 25) -> None:
    """The offline legs equal the SQL functions on a sample of queries."""
    lmat = split.bm25[BM25_DEFAULT]
    id_index = {int(d): i for i, d in enumerate(corpus.doc_ids)}
    worst, overlaps = 0.0, []
    with db.connect() as conn:
        for i in range(0, len(split.queries.ids), max(1, len(split.queries.ids) // sample)):
            rows = conn.execute(
                "SELECT document_id, score FROM medpg.bm25_scores(%s, 2.0, 0.5, 2.0)",
                (split.queries.texts[i],),
            ).fetchall()
            sql_scores = {id_index[r[0]]: r[1] for r in rows}
            mine = {int(j): lmat[i, j] for j in np.flatnonzero(lmat[i] > 0)}
            assert set(sql_scores) == set(mine), "same matching documents"
            worst = max([worst, *(abs(sql_scores[j] - mine[j]) for j in mine)])
            rows = conn.execute(
                "SELECT document_id, score FROM medpg.dense_search(%s::vector, 100, 100)",
                (split.queries.vectors[i].tolist(),),
            ).fetchall()
            top = set(np.argsort(-split.dense["max"][i])[:100].tolist())
            overlaps.append(len(top & {id_index[r[0]] for r in rows}) / 100)
            for r in rows[:10]:
                assert abs(r[1] - split.dense["max"][i, id_index[r[0]]]) < 1e-5
        conn.rollback()
    print(
        f"verify {split.name}: BM25 max |SQL - offline| {worst:.2e}; dense top-100 overlap with HNSW "
        f"{np.mean(overlaps):.3f} (min {min(overlaps):.2f})",
        flush=True,
    )


def second_pass(
    corpus: Corpus,
    s: Split,
    first: Fusion,
    second: Fusion,
    fb_docs: int,
    beta: float,
    rescore_only: bool,
    n: int = 100,
    rm3: tuple[int, int, float] | None = None,
    best_chunk_only: bool = False,
    top_m: int | None = None,
) -> list[np.ndarray]:
    """Hybrid, then Rocchio on the query vector from the hybrid top ``fb_docs``, then hybrid again.

    ``rescore_only``: the moved vector rescores the first pass's candidates (no second index scan).
    ``rm3``: also expand the BM25 query from the same feedback documents.
    """
    dmat, lmat = s.dense["max"], s.bm25[BM25_DEFAULT]
    firsts, lists = [], []
    for i in range(len(s.queries.ids)):
        c = candidates(dmat[i], lmat[i], n, float(s.coverage[i]))
        lists.append(c)
        firsts.append(ranking(c, first(c)))
    moved = rocchio(corpus, s, firsts, fb_docs, beta)
    if rm3 is not None:
        lmat = bm25_matrix(corpus, s.queries, *BM25_DEFAULT, weights=rm3_weights(corpus, s, firsts, *rm3))
    out = []
    for i, c in enumerate(lists):
        sims = corpus.chunk_vectors @ moved[i]
        if best_chunk_only:  # each document keeps the chunk closest to the query as given
            best = best_chunks(corpus, s.sims[i])
            d2 = sims[best]
        else:
            d2 = np.maximum.reduceat(sims, corpus.chunk_starts)
        if top_m is not None:  # feedback reranks the first fusion's top m only; the rest keep their order
            head = firsts[i][:top_m]
            keep = np.isin(c.docs, head)
            c2 = Lists(c.docs[keep], d2[c.docs[keep]], c.lx[keep], c.d_rank[keep].copy(), c.l_rank[keep].copy(),
                       c.coverage)
            for ranks, score in ((c2.d_rank, c2.d), (c2.l_rank, c2.lx)):
                ranked = np.flatnonzero(ranks > 0)
                order = ranked[np.lexsort((c2.docs[ranked], -score[ranked]))]
                ranks[order] = np.arange(1, len(order) + 1)
            reranked = ranking(c2, second(c2))
            rest = [d for d in firsts[i] if d not in set(head.tolist())]
            out.append(np.r_[reranked, np.array(rest, dtype=np.int64)][:DEPTH])
            continue
        if rescore_only:
            c2 = Lists(
                c.docs, d2[c.docs], lmat[i][c.docs] if rm3 else c.lx, c.d_rank.copy(), c.l_rank, c.coverage
            )
            ranked = np.flatnonzero(c.d_rank > 0)
            order = ranked[np.lexsort((c.docs[ranked], -c2.d[ranked]))]
            c2.d_rank[order] = np.arange(1, len(order) + 1)
        else:
            c2 = candidates(d2, lmat[i], n, float(s.coverage[i]))
        out.append(ranking(c2, second(c2)))
    return out


def best_chunks(corpus: Corpus, sims: np.ndarray) -> np.ndarray:
    """Index of each document's best chunk for one query's chunk similarities."""
    order = np.lexsort((-sims, corpus.chunk_doc))  # by document, best first
    first = np.r_[True, corpus.chunk_doc[order][1:] != corpus.chunk_doc[order][:-1]]
    return order[first]


def combos(
    corpus: Corpus,
    splits: list[Split],
    add: Callable[[str, str, Callable[[Split], list[np.ndarray]]], None],
    groups: set[str],
) -> None:
    mm, cov = convex("minmax"), adaptive("minmax", "coverage")
    add("adaptive", "minmax, w_BM25 = query coverage (adopted: fusion 'adaptive')", lambda s: run_fusion(s, cov))
    add(
        "rocchio",
        "coverage: hybrid -> Rocchio top 3, beta 1.0, rescoring each document's best chunk -> hybrid"
        " (adopted: the default)",
        lambda s: second_pass(corpus, s, cov, cov, 3, 1.0, True, best_chunk_only=True),
    )
    for m in (30, 50):
        add(
            "rocchio",
            f"coverage: hybrid -> Rocchio top 3, beta 1.0, reranking the first top {m} (best chunks)",
            lambda s, m=m: second_pass(corpus, s, cov, cov, 3, 1.0, True, best_chunk_only=True, top_m=m),
        )
    for fb, beta in ((3, 0.5), (5, 0.5), (3, 1.0), (5, 1.0)):
        for rescore in (False, True):
            how = "rescoring the first candidates" if rescore else "second dense retrieval"
            add(
                "rocchio",
                f"hybrid -> Rocchio top {fb}, beta {beta}, {how} -> hybrid",
                lambda s, fb=fb, beta=beta, r=rescore: second_pass(corpus, s, mm, mm, fb, beta, r),
            )
    for fb, beta in ((3, 0.5), (5, 0.5), (3, 1.0)):
        add(
            "rocchio",
            f"coverage: hybrid -> Rocchio top {fb}, beta {beta}, rescoring -> hybrid",
            lambda s, fb=fb, beta=beta: second_pass(corpus, s, cov, cov, fb, beta, True),
        )
        add(
            "rocchio",
            f"coverage: hybrid -> Rocchio top {fb}, beta {beta}, second retrieval -> hybrid",
            lambda s, fb=fb, beta=beta: second_pass(corpus, s, cov, cov, fb, beta, False),
        )
    add(
        "rocchio",
        "hybrid -> Rocchio top 3, beta 0.5 + RM3 (5 docs, 10 terms, 0.5) -> hybrid",
        lambda s: second_pass(corpus, s, mm, mm, 3, 0.5, False, rm3=(5, 10, 0.5)),
    )
    add(
        "rocchio",
        "hybrid -> Rocchio top 3, beta 0.5, rescoring, 200 candidates",
        lambda s: second_pass(corpus, s, mm, mm, 3, 0.5, True, n=200),
    )
    add("depth", "minmax 0.5/0.5, 200 candidates per leg", lambda s: run_fusion(s, mm, n=200))


LATENCY_CALLS = {
    "weighted, no feedback (the old default, on the new functions)": "fusion => 'weighted', feedback => 'none'",
    "adaptive, no feedback": "fusion => 'adaptive', feedback => 'none'",
    "adaptive + Rocchio feedback (the new default)": "fusion => 'adaptive', feedback => 'rocchio'",
}
# The functions as they were before adaptive fusion and feedback, loaded into a scratch schema
# medpg_old (see --old-schema): the same call as the old default, on the old code.
OLD_CALL = "SELECT * FROM medpg_old.hybrid_search(%s, %s, 10)"


def latency(db: Database, dataset: Path, cache: Path, rounds: int, calls: dict[str, str]) -> str:
    """p50/p95 of one medpg.hybrid_search call (top 10, explanations) per NFCorpus test query.

    The calls take turns query by query, so load on the shared machine touches them alike.
    """
    queries = load_queries(db, dataset, "test", cache)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with db.connect() as conn:
        statements = {
            name: extra
            if extra.startswith("SELECT")
            else f"SELECT * FROM medpg.hybrid_search(%s, %s, 10{', ' + extra if extra else ''})"
            for name, extra in calls.items()
        }
        for text, vector in list(zip(queries.texts, queries.vectors, strict=True))[:10]:
            for sql in statements.values():
                conn.execute(sql, (text, vector)).fetchall()
        for _ in range(rounds):
            for text, vector in zip(queries.texts, queries.vectors, strict=True):
                for name, sql in statements.items():
                    t0 = time.perf_counter()
                    conn.execute(sql, (text, vector)).fetchall()
                    times[name].append((time.perf_counter() - t0) * 1000)
        conn.rollback()
    lines = ["| medpg.hybrid_search call | p50 ms | p95 ms |", "|---|---:|---:|"]
    for name, ts in times.items():
        lines.append(f"| {name} | {np.percentile(ts, 50):.2f} | {np.percentile(ts, 95):.2f} |")
    return "\n".join(lines)


SQL_SYSTEMS = {
    "lexical BM25": "mode => 'lexical'",
    "dense": "mode => 'dense'",
    "hybrid weighted, no feedback (the old default)": "fusion => 'weighted', feedback => 'none'",
    "hybrid adaptive, no feedback": "fusion => 'adaptive', feedback => 'none'",
    "hybrid adaptive + Rocchio (the default)": "",
}


def sql_check(db: Database, corpus: Corpus, dataset: Path, cache: Path, names: list[str]) -> str:
    """The held-out checks through the SQL functions themselves: each system's top 100 per query."""
    lines = ["| system | " + " | ".join(f"{n} nDCG@10" for n in names) + " |", "|---|" + "---:|" * len(names)]
    scores: dict[str, list[float]] = {name: [] for name in SQL_SYSTEMS}
    external = dict(zip(corpus.doc_ids.tolist(), range(len(corpus.doc_ids)), strict=True))
    for split in names:
        queries = load_queries(db, dataset, split, cache)
        with db.connect() as conn:
            for name, extra in SQL_SYSTEMS.items():
                sql = f"SELECT document_id FROM medpg.hybrid_search(%s, %s, 100{', ' + extra if extra else ''})"
                runs = []
                for text, vector in zip(queries.texts, queries.vectors, strict=True):
                    rows = conn.execute(sql, (text, None if "'lexical'" in extra else vector)).fetchall()
                    runs.append(np.array([external[r[0]] for r in rows], dtype=np.int64))
                scores[name].append(evaluate(queries, corpus, runs)[0])
            conn.rollback()
    for name, vals in scores.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--splits", default="train,dev,dev-typo,dev-noisy")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/medpg-ranking-cache"))
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--groups", default="main,combo")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--latency", type=int, metavar="ROUNDS", help="only time the SQL calls, ROUNDS passes")
    ap.add_argument("--latency-before", action="store_true", help="time the SQL defaults only (older schema)")
    ap.add_argument("--sql-check", action="store_true", help="score the SQL systems on --splits (held-out checks)")
    ap.add_argument("--old-schema", action="store_true", help="also time medpg_old.hybrid_search (scratch copy)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    settings = get_settings()
    db = Database(settings)
    if args.sql_check:
        table = sql_check(db, load_corpus(db, args.cache), args.dataset, args.cache, args.splits.split(","))
        print(table)
        if args.out:
            args.out.write_text(table + "\n")
        return
    if args.latency:
        calls = {"SQL defaults": ""} if args.latency_before else dict(LATENCY_CALLS)
        if args.old_schema:
            calls = {"weighted, no feedback (the old default, on the old functions)": OLD_CALL, **calls}
        table = latency(db, args.dataset, args.cache, args.latency, calls)
        print(table)
        if args.out:
            args.out.write_text(table + "\n")
        return
    corpus = load_corpus(db, args.cache)
    names = args.splits.split(",")
    splits = []
    for name in names:
        t0 = time.perf_counter()
        splits.append(prepare(corpus, load_queries(db, args.dataset, name, args.cache), name))
        print(
            f"{name}: {len(splits[-1].queries.ids)} queries ready in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        if args.verify and name == "dev":
            verify(db, corpus, splits[-1])
    rows = experiments(corpus, splits, set(args.groups.split(",")))
    table = render(rows, names)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
