"""The sentence-transformers encoders keep the library's contract and medpg's vectors.

``encode_query`` / ``encode_document`` (a model's own prompts apply), explicit prefixes as
``prompt=``, truncation at MEDPG_*_MAX_TOKENS, and ``CrossEncoder.rank`` for reranking.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medpg.config import Settings
from medpg.encoders import (
    RerankCandidate,
    clear_encoder_cache,
    load_article_encoder,
    load_cross_encoder,
    load_query_encoder,
    packaged_minilm_path,
)
from medpg.encoders.st import _embedding_dimension
from tests.fixtures.tiny_models import TINY_HIDDEN, TINY_PROMPTS

STRINGS = [
    "Do statins lower LDL cholesterol?",
    "dietary fiber and colon cancer",
    "Atorvastatin reduced low-density lipoprotein cholesterol by 40% in adults with hyperlipidemia.",
    "breast cancer",
]
WORDS = ["patient", "statin", "cholesterol", "fiber", "colon", "cancer"]
WORDS += ["breast", "trial", "dose", "daily", "therapy", "risk"]


def long_text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def minilm(**overrides: object) -> Settings:
    values: dict[str, object] = {"model_profile": "minilm", "device": "cpu", "hf_offline": True}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def plain_minilm(max_seq_length: int) -> Any:
    """A separate SentenceTransformer of the packaged model, truncating at ``max_seq_length``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(packaged_minilm_path()), device="cpu", local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


@pytest.fixture(scope="module")
def reference() -> Any:
    return plain_minilm(256)


def test_minilm_vectors_equal_the_models_plain_encode(reference: Any) -> None:
    settings = minilm()
    queries = load_query_encoder(settings).encode_queries(STRINGS)
    docs = load_article_encoder(settings).encode_documents(["Title"] * len(STRINGS), STRINGS)
    expected_docs = reference.encode([f"Title. {s}" for s in STRINGS], normalize_embeddings=True)
    expected_queries = reference.encode(STRINGS, normalize_embeddings=True)  # all under 64 tokens
    assert np.abs(queries - expected_queries).max() < 1e-5
    assert np.abs(docs - expected_docs).max() < 1e-5


def test_each_role_truncates_at_its_own_limit_on_the_shared_model() -> None:
    settings = minilm()  # queries at 64 tokens, articles at 256 (the minilm profile)
    query_encoder, article_encoder = load_query_encoder(settings), load_article_encoder(settings)
    assert query_encoder.model is article_encoder.model  # type: ignore[attr-defined]
    text = long_text(400)
    first = query_encoder.encode_queries([text])
    article = article_encoder.encode_documents([""], [text])
    again = query_encoder.encode_queries([text])
    np.testing.assert_array_equal(first, again)  # the article call did not change the query limit
    assert np.abs(first - plain_minilm(64).encode([text], normalize_embeddings=True)).max() < 1e-5
    assert np.abs(article - plain_minilm(256).encode([text], normalize_embeddings=True)).max() < 1e-5
    assert not np.allclose(first, article, atol=1e-3)


def test_query_max_tokens_setting_is_the_truncation() -> None:
    text = long_text(200, seed=1)
    got = load_query_encoder(minilm(query_max_tokens=32)).encode_queries([text])
    assert np.abs(got - plain_minilm(32).encode([text], normalize_embeddings=True)).max() < 1e-5


def st_profile(model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_profile": "sentence-transformers",
        "query_model": str(model_dir),
        "article_model": str(model_dir),
        "cross_encoder_model": "none",
        "embedding_dim": TINY_HIDDEN,
        "similarity": "cosine",
        "device": "cpu",
        "hf_offline": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_models_own_prompts_are_applied(tiny_prompted_st_dir: Path) -> None:
    settings = st_profile(tiny_prompted_st_dir)
    query_encoder = load_query_encoder(settings)
    model = query_encoder.model  # type: ignore[attr-defined]
    got_query = query_encoder.encode_queries(["statin dose"])
    got_doc = load_article_encoder(settings).encode_documents(["Trial"], ["statin dose"])
    np.testing.assert_allclose(
        got_query, model.encode([TINY_PROMPTS["query"] + "statin dose"], normalize_embeddings=True), atol=1e-5
    )
    np.testing.assert_allclose(
        got_doc,
        model.encode([TINY_PROMPTS["document"] + "Trial. statin dose"], normalize_embeddings=True),
        atol=1e-5,
    )
    assert not np.allclose(got_query, model.encode(["statin dose"], normalize_embeddings=True), atol=1e-4)


def test_an_explicit_prefix_wins_over_the_models_prompt(tiny_prompted_st_dir: Path) -> None:
    settings = st_profile(tiny_prompted_st_dir, query_prefix="query: ", document_prefix="passage: ")
    query_encoder = load_query_encoder(settings)
    model = query_encoder.model  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        query_encoder.encode_queries(["fiber"]),
        model.encode(["query: fiber"], normalize_embeddings=True),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        load_article_encoder(settings).encode_documents(["Fiber"], ["colon"]),
        model.encode(["passage: Fiber. colon"], normalize_embeddings=True),
        atol=1e-5,
    )


def test_cross_encoder_ranks_every_candidate_best_first(tiny_cross_encoder_dir: Path) -> None:
    settings = minilm(
        model_profile="sentence-transformers",
        article_model=str(packaged_minilm_path()),
        cross_encoder_model=str(tiny_cross_encoder_dir),
        cross_encoder_temperature=0.5,
    )
    cross = load_cross_encoder(settings)
    assert cross is not None
    candidates = [RerankCandidate(f"d{i}", f"title {i}", long_text(5 + 7 * i, seed=i)) for i in range(6)]
    ranked = cross.rerank("statin therapy", candidates)
    assert sorted(i for i, _ in ranked) == sorted(c.id for c in candidates)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    import torch

    logits = cross.model.predict(  # type: ignore[attr-defined]
        [("statin therapy", f"{c.title}. {c.text}") for c in candidates], activation_fn=torch.nn.Identity()
    )
    by_id = dict(ranked)
    for c, logit in zip(candidates, logits, strict=True):
        assert by_id[c.id] == pytest.approx(float(logit) / 0.5, abs=1e-5)
    clear_encoder_cache()


def test_dimension_is_read_with_either_name_of_the_method() -> None:
    class Before6:
        def get_sentence_embedding_dimension(self) -> int:
            return 384

    class Since6:
        def get_embedding_dimension(self) -> int:
            return 768

    assert _embedding_dimension(Before6()) == 384
    assert _embedding_dimension(Since6()) == 768
