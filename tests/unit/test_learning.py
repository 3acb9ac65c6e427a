"""medpg.learning without a database: the adapter's arithmetic, held-out splits, qrels files,
document vectors, feedback checks, and training on a small synthetic problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medpg.config import Settings
from medpg.errors import InputError
from medpg.learning.active import ActiveAdaptation, fusion_weights
from medpg.learning.adapter import ResidualLinear
from medpg.learning.feedback import check_grade, check_kind, check_query
from medpg.learning.judgments import (
    Judgments,
    feedback_query_id,
    hash_split,
    heldout_share,
    normalize_query,
    read_qrels,
    read_queries,
)
from medpg.learning.store import _parse_vector_array, _vector_array_literal
from medpg.learning.train import DocumentVectors, TrainConfig, TrainingSet, train_adapter


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_zero_adapter_is_the_identity_and_lengths_are_kept() -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((5, 8)).astype(np.float32) * 3  # inner-product vectors: not unit length
    assert np.allclose(ResidualLinear.identity(8).apply(q), q, atol=1e-6)
    adapter = ResidualLinear(rng.standard_normal((8, 8)).astype(np.float32) * 0.3)
    out = adapter.apply(q)
    assert out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), np.linalg.norm(q, axis=1), rtol=1e-5)
    x = q.astype(np.float64) + q.astype(np.float64) @ adapter.weight.astype(np.float64).T
    expected = x / np.linalg.norm(x, axis=1, keepdims=True) * np.linalg.norm(q, axis=1, keepdims=True)
    assert np.allclose(out, expected, atol=1e-6)
    assert np.allclose(adapter.apply(q[2]), out[2], atol=1e-7)  # one vector as a row of a batch
    assert np.array_equal(adapter.apply(np.zeros(8)), np.zeros(8, dtype=np.float32))


@pytest.mark.parametrize("weight", [np.zeros((3, 4)), np.zeros(3), np.full((2, 2), np.nan)])
def test_an_adapter_needs_a_finite_square_matrix(weight: np.ndarray) -> None:
    with pytest.raises(ValueError, match="finite square"):
        ResidualLinear(weight)


def test_dimension_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        ResidualLinear.identity(4).apply(np.ones(5))


def test_the_stored_form_round_trips_exactly() -> None:
    w = np.random.default_rng(2).standard_normal((6, 6)).astype(np.float32) * 1e-3
    literal = _vector_array_literal(w)
    assert literal.startswith('{"[') and literal.count('"[') == 6
    # PostgreSQL writes vector[] back in this form; the parse gives the same float32 values
    assert np.array_equal(_parse_vector_array(literal), w)


def test_the_held_out_split_is_fixed_and_about_a_fifth() -> None:
    ids = [f"q{i}" for i in range(2000)]
    j = Judgments({q: "text" for q in ids}, {q: {1: 1} for q in ids})
    train, held = hash_split(j)
    assert 0.17 < len(held) / len(ids) < 0.23
    assert set(train.ids) | set(held.ids) == set(ids) and not set(train.ids) & set(held.ids)
    assert hash_split(j)[1].ids == held.ids  # the same queries every run
    assert all(heldout_share(q) < 0.2 for q in held.ids)
    two = Judgments({"a": "x", "b": "y"}, {"a": {1: 1}, "b": {2: 2}})
    assert [len(part) for part in hash_split(two)] == [1, 1]
    with pytest.raises(InputError, match="at least 2"):
        hash_split(Judgments({"a": "x"}, {"a": {1: 1}}))


def test_queries_without_a_relevant_document_are_left_out() -> None:
    j = Judgments({"a": "x", "b": "y", "c": "z"}, {"a": {1: 0, 2: 1}, "b": {3: 0}, "c": {4: 2}, "d": {5: 1}})
    assert j.ids == ["a", "c"] and j.judgment_count() == 3
    assert j.relevant() == {"a": {"2": 1}, "c": {"4": 2}}


def test_qrels_files_are_read_with_errors_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td1\t-1\n\n", encoding="utf-8")
    assert read_qrels(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d1": 0}}
    path.write_text("q1\td1\t2\nq1\td2\tvery\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"train.tsv:2: the score must be an integer"):
        read_qrels(path)
    path.write_text("q1\td1\t1\nq2\td1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"train.tsv:2: expected"):
        read_qrels(path)
    with pytest.raises(InputError, match="missing"):
        read_qrels(tmp_path / "nope.tsv")


def test_queries_are_read_as_search_reads_them_and_never_quoted(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text(
        '{"_id": "q1", "text": "chest\\u0000pain"}\n{"_id": "q2", "text": "secretword"}\n', encoding="utf-8"
    )
    assert read_queries(path, ["q1"], 100) == {"q1": "chest pain"}
    with pytest.raises(InputError, match="1 judged queries are missing"):
        read_queries(path, ["q1", "q3"], 100)
    with pytest.raises(InputError) as err:
        read_queries(path, ["q2"], 5)
    assert "queries.jsonl:2" in str(err.value) and "secretword" not in str(err.value)


def test_feedback_queries_are_grouped_by_their_normalized_text() -> None:
    assert normalize_query("  chest \t pain\n") == "chest pain"
    assert feedback_query_id(" chest  pain") == feedback_query_id("chest pain")
    assert feedback_query_id("chest pain") != feedback_query_id("Chest pain")
    assert "chest" not in feedback_query_id("chest pain")


def test_feedback_values_are_checked() -> None:
    assert check_query("chest pain", 20) == "chest pain"
    for bad, why in (
        ("", "empty"),
        ("  ", "empty"),
        ("a\x00b", "NUL"),
        ("x" * 21, "limit"),
        ("\ud800", "surrogate"),
    ):
        with pytest.raises(InputError, match=why):
            check_query(bad, 20)
    with pytest.raises(InputError, match="string"):
        check_query(3, 20)
    assert [check_grade(g) for g in (0, 3)] == [0, 3]
    for grade in (-1, 4, True, 2.0, "2", None):
        with pytest.raises(InputError, match="grade"):
            check_grade(grade)
    assert check_kind("opened") == "opened"
    with pytest.raises(InputError, match="kind"):
        check_kind("liked")


def test_learned_fusion_weights_apply_unless_the_user_chose_weights() -> None:
    active = ActiveAdaptation(1, "m@1", 0.7, 0.3, ResidualLinear.identity(2))
    default = Settings(_env_file=None, _settings_file=None)  # type: ignore[call-arg]
    assert fusion_weights(default, None) == (0.5, 0.5)
    assert fusion_weights(default, active) == (0.7, 0.3)
    chosen = Settings(_env_file=None, _settings_file=None, lexical_weight=0.4)  # type: ignore[call-arg]
    assert fusion_weights(chosen, active) == (0.5, 0.4)


def test_document_vectors_group_chunks_by_document() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    docs = DocumentVectors.from_rows([30, 10, 30, 20, 10, 30], vectors)
    assert docs.document_ids.tolist() == [10, 20, 30] and docs.starts.tolist() == [0, 2, 3, 6]
    assert docs.index_of([20, 99, 10]).tolist() == [1, -1, 0]
    rows, owner = docs.chunks_of(np.array([2, 0]))
    assert owner.tolist() == [0, 0, 0, 1, 1]
    assert docs.vectors[rows].tolist() == [
        vectors[0].tolist(),
        vectors[2].tolist(),
        vectors[5].tolist(),
        vectors[1].tolist(),
        vectors[4].tolist(),
    ]


def test_training_learns_a_mapping_the_encoder_does_not_know() -> None:
    """Queries point in random directions; each must find the documents of its hidden topic."""
    rng = np.random.default_rng(0)
    dim, topics = 16, 8
    centres = _unit(rng.standard_normal((topics, dim)))
    doc_topic = np.repeat(np.arange(topics), 3)
    doc_vectors = _unit(centres[doc_topic] + 0.1 * rng.standard_normal((len(doc_topic), dim)))
    codes = _unit(rng.standard_normal((topics, dim)))  # the "code word" of each topic
    q_topic = np.repeat(np.arange(topics), 6)
    queries = _unit(codes[q_topic] + 0.05 * rng.standard_normal((len(q_topic), dim))).astype(np.float32)
    docs = DocumentVectors.from_rows(list(range(len(doc_topic))), doc_vectors)
    held = np.arange(len(q_topic)) % 6 == 0

    def top3_hits(adapter: ResidualLinear) -> float:
        scores = adapter.apply(queries[held]) @ doc_vectors.T
        best = np.argsort(-scores, axis=1)[:, :3]
        return float(np.mean(doc_topic[best] == q_topic[held][:, None]))

    data = TrainingSet(
        queries[~held],
        [{int(d): 1.0 for d in np.flatnonzero(doc_topic == t)} for t in q_topic[~held]],
        [np.zeros(0, dtype=np.int64) for _ in q_topic[~held]],
    )
    before = top3_hits(ResidualLinear.identity(dim))
    result = train_adapter(
        data, docs, top3_hits, TrainConfig(learning_rate=1e-2, batch_size=8, max_epochs=40)
    )
    assert result.history[0].heldout_ndcg10 == before < 0.5
    assert result.heldout_ndcg10 > 0.9 and result.best_epoch > 0
    assert top3_hits(result.adapter) == result.heldout_ndcg10
    # hard negatives and in-batch negatives only (a corpus too large to score whole) learn it too
    sampled = train_adapter(
        data,
        docs,
        top3_hits,
        TrainConfig(learning_rate=1e-2, batch_size=8, max_epochs=40, all_documents_up_to=1),
    )
    assert sampled.heldout_ndcg10 > 0.8


def test_the_cli_defaults_are_the_training_defaults() -> None:
    from medpg.cli import learn as learn_cli

    assert (TrainConfig.learning_rate, TrainConfig.batch_size) == (
        learn_cli.LEARNING_RATE,
        learn_cli.BATCH_SIZE,
    )
