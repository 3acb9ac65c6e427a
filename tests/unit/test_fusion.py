"""Fusion arithmetic (pure Python) against hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medpg.retrieval.fusion import (
    Candidate,
    blend_rerank,
    feedback_candidates,
    fuse,
    idf,
    lexical_coverage,
    minmax,
    rank_fused,
    reciprocal_rank_fusion,
    rocchio_vector,
    rrf_score,
    sigmoid,
)


def test_rrf_of_two_lists_by_hand() -> None:
    # d1: 1/(60+1) + 1/(60+2); d3: 1/(60+3) + 1/(60+1); d2: 1/(60+2); d4: 1/(60+3)
    fused = reciprocal_rank_fusion([["d1", "d2", "d3"], ["d3", "d1", "d4"]], k=60)
    assert fused["d1"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["d3"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d2"] == pytest.approx(1 / 62)
    assert fused["d4"] == pytest.approx(1 / 63)
    assert rank_fused(fused) == ["d1", "d3", "d2", "d4"]


def test_weighted_rrf_and_small_k() -> None:
    # k = 1: a = 2/(1+1) + 1/(1+2) = 1.3333; b = 2/(1+2) + 1/(1+1) = 1.1667
    fused = reciprocal_rank_fusion([["a", "b"], ["b", "a"]], weights=[2.0, 1.0], k=1)
    assert fused["a"] == pytest.approx(2 / 2 + 1 / 3)
    assert fused["b"] == pytest.approx(2 / 3 + 1 / 2)
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


def test_rrf_score_ignores_missing_ranks() -> None:
    assert rrf_score([None, 4], [0.5, 0.5], k=6) == pytest.approx(0.5 / 10)
    assert rrf_score([None, None], [1.0, 1.0]) == 0.0


def test_fuse_rrf_matches_formula() -> None:
    cands = [
        Candidate("a", dense_rank=1, dense_score=0.9, lexical_rank=None, lexical_score=0.0),
        Candidate("b", dense_rank=2, dense_score=0.8, lexical_rank=1, lexical_score=7.0),
    ]
    fused = fuse(cands, "rrf", rrf_k=60, dense_weight=1.0, lexical_weight=2.0)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 2 / 61)


def test_weighted_fusion_by_hand() -> None:
    # dense list: a .9, b .7, c .5 (range .5-.9); d's similarity .6 is known but d was not ranked.
    # lexical list: b 10, d 4 (range 4-10); a scored 2 and c 0 without being ranked.
    cands = [
        Candidate("a", 1, 0.9, None, 2.0),
        Candidate("b", 2, 0.7, 1, 10.0),
        Candidate("c", 3, 0.5, None, 0.0),
        Candidate("d", None, 0.6, 2, 4.0),
    ]
    fused = fuse(cands, "weighted", dense_weight=0.5, lexical_weight=0.5)
    assert fused["a"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 - 4) / 6)  # 0.3333
    assert fused["b"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)  # 0.75
    assert fused["c"] == pytest.approx(0.5 * 0.0 + 0.5 * (0 - 4) / 6)  # -0.3333
    assert fused["d"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.0)  # 0.125
    assert rank_fused(fused) == ["b", "a", "d", "c"]


def test_weighted_fusion_unknown_score_adds_nothing() -> None:
    cands = [Candidate("a", 1, 0.9, None, None), Candidate("b", 2, 0.1, 1, 3.0)]
    fused = fuse(cands, "weighted", dense_weight=1.0, lexical_weight=1.0)
    assert fused["a"] == pytest.approx(1.0)  # dense 1, lexical unknown
    assert fused["b"] == pytest.approx(0.0 + 1.0)  # dense 0, lexical: a one-element list -> 1


def test_fuse_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse([], "borda")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("score", "lo", "hi", "expected"),
    [
        (5.0, 0.0, 10.0, 0.5),
        (-5.0, 0.0, 10.0, -0.5),  # outside the list's range: below 0
        (3.0, 3.0, 3.0, 1.0),  # empty range: at the top
        (2.0, 3.0, 3.0, 0.0),
        (None, 0.0, 1.0, None),
        (1.0, None, None, None),
    ],
)
def test_minmax(score: float | None, lo: float | None, hi: float | None, expected: float | None) -> None:
    assert minmax(score, lo, hi) == (pytest.approx(expected) if expected is not None else None)


def test_sigmoid_is_stable() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1000.0) == 1.0
    assert sigmoid(-1000.0) == 0.0
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_blend_rerank_defaults_to_cross_encoder_order() -> None:
    ce = {"a": -1.0, "b": 3.0, "c": 0.5}
    out = blend_rerank(ce, {"a": 0.9, "b": 0.1, "c": 0.5}, {"a": 9.0, "b": 1.0, "c": None})
    assert rank_fused(out) == ["b", "c", "a"]
    assert out["b"] == pytest.approx(sigmoid(3.0))


def test_blend_rerank_with_first_stage_weights_by_hand() -> None:
    ce = {"a": 0.0, "b": 0.0}  # the cross-encoder cannot tell them apart: sigmoid 0.5 each
    out = blend_rerank(
        ce,
        {"a": 0.8, "b": 0.4},
        {"a": 1.0, "b": 5.0},
        rerank_weight=0.6,
        dense_weight=0.3,
        lexical_weight=0.1,
    )
    assert out["a"] == pytest.approx(0.6 * 0.5 + 0.3 * 1.0 + 0.1 * 0.0)
    assert out["b"] == pytest.approx(0.6 * 0.5 + 0.3 * 0.0 + 0.1 * 1.0)
    assert rank_fused(out) == ["a", "b"]


# --------------------------------------------------------------------------------------------------
# adaptive fusion, lexical coverage, Rocchio feedback

CANDS = [
    Candidate("a", 1, 0.9, None, 2.0),
    Candidate("b", 2, 0.7, 1, 10.0),
    Candidate("c", 3, 0.5, None, 0.0),
    Candidate("d", None, 0.6, 2, 4.0),
]


def test_adaptive_fusion_scales_the_lexical_weight_by_coverage() -> None:
    fused = fuse(CANDS, "adaptive", dense_weight=0.5, lexical_weight=0.5, lexical_coverage=0.25)
    assert fused["a"] == pytest.approx(0.5 * 1.0 + 0.125 * (2 - 4) / 6)
    assert fused["b"] == pytest.approx(0.5 * 0.5 + 0.125 * 1.0)
    assert fused["d"] == pytest.approx(0.5 * 0.25 + 0.125 * 0.0)
    # full coverage is today's weighted fusion; no coverage is the dense order
    assert fuse(CANDS, "adaptive", lexical_coverage=1.0) == fuse(CANDS, "weighted")
    assert rank_fused(fuse(CANDS, "adaptive", lexical_coverage=0.0)) == ["a", "b", "d", "c"]
    # coverage changes nothing but the adaptive method
    assert fuse(CANDS, "weighted", lexical_coverage=0.0) == fuse(CANDS, "weighted")


def test_idf_is_lucenes() -> None:
    assert idf(0, 10) == pytest.approx(math.log(1 + 10.5 / 0.5))
    assert idf(10, 10) == pytest.approx(math.log(1 + 0.5 / 10.5))
    assert idf(20, 10) == pytest.approx(math.log(1 + 0.5 / 20.5))  # df > N (another scope): still > 0


def test_lexical_coverage_by_hand() -> None:
    # N = 100; "heart" in 10 documents, "attak" (a misspelling) in none, "valv" twice in the query
    dfs = {"heart": 10, "valv": 4}
    w_heart, w_valve, w_missing = idf(10, 100), 2 * idf(4, 100), idf(0, 100)
    got = lexical_coverage({"heart": 1, "attak": 1, "valv": 2}, dfs, 100)
    assert got == pytest.approx((w_heart + w_valve) / (w_heart + w_valve + w_missing))
    assert lexical_coverage({"heart": 1}, dfs, 100) == 1.0
    assert lexical_coverage({"attak": 3}, dfs, 100) == 0.0
    assert lexical_coverage({}, dfs, 100) == 0.0  # all stopwords: nothing for BM25 to see
    assert lexical_coverage({"heart": 1}, dfs, 0) == 1.0  # an empty corpus counts as one document


def test_rocchio_vector_by_hand() -> None:
    q = [2.0, 0.0, 0.0]
    moved = rocchio_vector(q, [[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], weight=1.0)
    # q/|q| + mean of unit feedback = (1, .5, .5); normalized and scaled back to |q| = 2
    expected = np.array([1.0, 0.5, 0.5]) / math.sqrt(1.5) * 2
    assert moved == pytest.approx(expected)
    assert float(np.linalg.norm(moved)) == pytest.approx(2.0)
    assert rocchio_vector(q, [], 1.0) == pytest.approx(q)
    assert rocchio_vector(q, [[0.0, 1.0, 0.0]], 0.0) == pytest.approx(q)
    assert rocchio_vector([0.0, 0.0, 0.0], [[0.0, 1.0, 0.0]], 1.0) == pytest.approx([0.0, 0.0, 0.0])
    assert rocchio_vector([1.0, 0.0], [[-1.0, 0.0]], 1.0) == pytest.approx([1.0, 0.0])  # zero sum


def test_feedback_candidates_rerank_the_dense_list_only() -> None:
    new = {"a": 0.1, "b": 0.8, "c": 0.8, "d": 0.95}
    out = {c.document_id: c for c in feedback_candidates(CANDS, new)}
    # the dense list (a, b, c) keeps its members, ranked by the new scores, ties by id
    assert (out["b"].dense_rank, out["c"].dense_rank, out["a"].dense_rank) == (1, 2, 3)
    assert out["d"].dense_rank is None and out["d"].dense_score == 0.95  # scored, still not ranked
    assert [out[k].lexical_rank for k in "abcd"] == [None, 1, None, 2]
    assert out["a"].dense_score == 0.1
    # a document the moved vector could not score keeps its first score
    assert {c.document_id: c.dense_score for c in feedback_candidates(CANDS, {})} == {
        c.document_id: c.dense_score for c in CANDS
    }
