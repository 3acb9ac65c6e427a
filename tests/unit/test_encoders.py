"""The encoder layer on tiny random BERT models (real loading code, offline) and the packaged MiniLM."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medpg.config import Settings
from medpg.encoders import (
    RerankCandidate,
    check_dimension,
    load_article_encoder,
    load_cross_encoder,
    load_query_encoder,
    packaged_minilm_path,
)
from medpg.encoders.batching import token_budget_batches
from medpg.errors import ConfigError, ModelNotAvailableError, SchemaMismatchError
from tests.fixtures.tiny_models import TINY_HIDDEN, tiny_medcpt_settings, tiny_vocabulary

REPO = Path(__file__).resolve().parents[2]
WORDS = [w for w in tiny_vocabulary() if w.isalpha() and len(w) > 2]


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def card_cls(model_dir: Path, first: list[str], second: list[str] | None, max_length: int) -> np.ndarray:
    """The MedCPT model-card computation, written out with transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    inputs = first if second is None else [[a, b] for a, b in zip(first, second, strict=True)]
    with torch.no_grad():
        encoded = tokenizer(inputs, truncation=True, padding=True, return_tensors="pt", max_length=max_length)
        return model(**encoded).last_hidden_state[:, 0, :].numpy()


def st_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"model_profile": "minilm", "device": "cpu", "hf_offline": True}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- MedCPT-style (CLS pooling, pairs, truncation) ------------------------------------------------


def test_query_pooling_matches_the_model_card(tiny_settings: Settings, tiny_bert_dir: Path) -> None:
    queries = ["statin use and breast cancer survival", "vitamin d", words(30, 1)]
    encoder = load_query_encoder(tiny_settings)
    got = encoder.encode_queries(queries)
    assert got.dtype == np.float32 and got.shape == (3, TINY_HIDDEN) and encoder.dimension == TINY_HIDDEN
    np.testing.assert_allclose(got, card_cls(tiny_bert_dir, queries, None, 64), atol=1e-5)


def test_article_pooling_matches_the_model_card(tiny_settings: Settings, tiny_bert_dir: Path) -> None:
    titles = ["Statin use and breast cancer", "", "Dietary fiber and colon cancer"]
    texts = [words(80, 2), "coffee intake and mortality in women", words(20, 3)]
    encoder = load_article_encoder(tiny_settings)
    got = encoder.encode_documents(titles, texts)
    assert encoder.similarity == "ip"
    np.testing.assert_allclose(got, card_cls(tiny_bert_dir, titles, texts, 512), atol=1e-5)


def test_query_truncated_at_64_tokens(tiny_settings: Settings, tiny_bert_dir: Path) -> None:
    encoder = load_query_encoder(tiny_settings)
    long_query = words(200, 4)
    features = encoder.backbone.tokenize([long_query], None, tiny_settings.query_max_tokens)  # type: ignore[attr-defined]
    assert len(features["input_ids"][0]) == 64
    # The tail beyond 64 tokens does not change the vector.
    longer = encoder.encode_queries([long_query, long_query + " " + words(50, 5)])
    np.testing.assert_allclose(longer[0], longer[1], atol=1e-6)
    np.testing.assert_allclose(longer[:1], card_cls(tiny_bert_dir, [long_query], None, 64), atol=1e-5)


def test_article_truncated_at_512_tokens(tiny_settings: Settings, tiny_bert_dir: Path) -> None:
    encoder = load_article_encoder(tiny_settings)
    title, text = "Statins and mortality", words(900, 6)
    features = encoder.backbone.tokenize([title], [text], tiny_settings.article_max_tokens)  # type: ignore[attr-defined]
    assert len(features["input_ids"][0]) == 512  # the model has 512 positions: more would crash
    got = encoder.encode_documents([title], [text])
    np.testing.assert_allclose(got, card_cls(tiny_bert_dir, [title], [text], 512), atol=1e-5)


def test_length_sorted_batches_equal_one_at_a_time_in_input_order(
    tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> None:
    settings = tiny_medcpt_settings(
        tiny_bert_dir, tiny_cross_encoder_dir, encode_batch_size=4, max_tokens_per_batch=300
    )
    rng = random.Random(7)
    lengths = [rng.choice([3, 10, 40, 120, 300, 700]) for _ in range(17)]
    titles = [words(rng.randint(0, 8), i) for i in range(17)]
    texts = [words(n, 100 + i) for i, n in enumerate(lengths)]
    encoder = load_article_encoder(settings)
    batched = encoder.encode_documents(titles, texts)
    single = np.vstack([encoder.encode_documents([t], [x]) for t, x in zip(titles, texts, strict=True)])
    assert batched.shape == (17, TINY_HIDDEN)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # and the plain card loop (padding to the longest, corpus order) gives the same rows
    np.testing.assert_allclose(batched, card_cls(tiny_bert_dir, titles, texts, 512), atol=1e-5)


def test_empty_inputs(tiny_settings: Settings) -> None:
    assert load_query_encoder(tiny_settings).encode_queries([]).shape == (0, TINY_HIDDEN)
    assert load_article_encoder(tiny_settings).encode_documents([], []).shape == (0, TINY_HIDDEN)
    cross = load_cross_encoder(tiny_settings)
    assert cross is not None and cross.rerank("statin", []) == []
    with pytest.raises(ValueError, match="titles"):
        load_article_encoder(tiny_settings).encode_documents(["a"], [])


def test_query_prefix_is_applied(tiny_bert_dir: Path, tiny_cross_encoder_dir: Path) -> None:
    settings = tiny_medcpt_settings(tiny_bert_dir, tiny_cross_encoder_dir, query_prefix="query: ")
    got = load_query_encoder(settings).encode_queries(["statin therapy"])
    np.testing.assert_allclose(got, card_cls(tiny_bert_dir, ["query: statin therapy"], None, 64), atol=1e-5)


def test_encoders_are_cached_per_configuration(tiny_settings: Settings) -> None:
    assert load_article_encoder(tiny_settings) is load_article_encoder(tiny_settings)
    assert load_query_encoder(tiny_settings) is load_query_encoder(tiny_settings)


# --- cross-encoder ----------------------------------------------------------------------------


CANDIDATES = [
    RerankCandidate("d1", "Statins and breast cancer", "statin use reduced mortality in women"),
    RerankCandidate(2, "", "coffee intake"),
    RerankCandidate("d3", "Vitamin D", words(60, 9)),
    RerankCandidate(("tuple", 4), "Fiber", "dietary fiber and colon cancer risk"),
]


def card_logits(cross_dir: Path, query: str, candidates: list[RerankCandidate]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(cross_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(cross_dir)).eval()
    pairs = [[query, f"{c.title}. {c.text}" if c.title else c.text] for c in candidates]
    with torch.no_grad():
        encoded = tokenizer(pairs, truncation=True, padding=True, return_tensors="pt", max_length=512)
        return model(**encoded).logits.squeeze(dim=1).numpy()


def test_rerank_scores_are_the_logits_sorted(tiny_settings: Settings, tiny_cross_encoder_dir: Path) -> None:
    cross = load_cross_encoder(tiny_settings)
    assert cross is not None
    ranked = cross.rerank("statin breast cancer", CANDIDATES)
    expected = card_logits(tiny_cross_encoder_dir, "statin breast cancer", CANDIDATES)
    assert len(ranked) == len(CANDIDATES) and {i for i, _ in ranked} == {c.id for c in CANDIDATES}
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    by_id = dict(ranked)
    for c, logit in zip(CANDIDATES, expected, strict=True):
        assert by_id[c.id] == pytest.approx(float(logit), abs=1e-5)


def test_temperature_divides_the_logit(tiny_bert_dir: Path, tiny_cross_encoder_dir: Path) -> None:
    plain = load_cross_encoder(tiny_medcpt_settings(tiny_bert_dir, tiny_cross_encoder_dir))
    warm = load_cross_encoder(
        tiny_medcpt_settings(tiny_bert_dir, tiny_cross_encoder_dir, cross_encoder_temperature=1.5)
    )
    assert plain is not None and warm is not None
    base, scaled = dict(plain.rerank("fiber", CANDIDATES)), dict(warm.rerank("fiber", CANDIDATES))
    for key, value in base.items():
        assert scaled[key] == pytest.approx(value / 1.5, abs=1e-6)


def test_cross_encoder_none_turns_reranking_off(tiny_bert_dir: Path, tiny_cross_encoder_dir: Path) -> None:
    settings = tiny_medcpt_settings(tiny_bert_dir, tiny_cross_encoder_dir, cross_encoder_model="none")
    assert load_cross_encoder(settings) is None


def test_sentence_transformers_cross_encoder_gives_the_same_logits(tiny_cross_encoder_dir: Path) -> None:
    settings = st_settings(
        model_profile="sentence-transformers",
        article_model=str(packaged_minilm_path()),
        cross_encoder_model=str(tiny_cross_encoder_dir),
        cross_encoder_temperature=2.0,
    )
    cross = load_cross_encoder(settings)
    assert cross is not None
    ranked = dict(cross.rerank("statin breast cancer", CANDIDATES))
    expected = card_logits(tiny_cross_encoder_dir, "statin breast cancer", CANDIDATES)
    for c, logit in zip(CANDIDATES, expected, strict=True):
        assert ranked[c.id] == pytest.approx(float(logit) / 2.0, abs=1e-5)


# --- dimensions, missing models, device, lazy imports ---------------------------------------------


def test_dimension_mismatch_with_the_column_is_refused() -> None:
    check_dimension(768, 768, "ncbi/MedCPT-Article-Encoder")
    with pytest.raises(SchemaMismatchError, match=r"384-dimensional.*768-dimensional"):
        check_dimension(384, 768, "all-MiniLM-L6-v2")


def test_model_disagreeing_with_the_configured_dimension_is_refused(
    tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> None:
    settings = tiny_medcpt_settings(tiny_bert_dir, tiny_cross_encoder_dir, embedding_dim=768)
    with pytest.raises(ConfigError, match=f"MEDPG_EMBEDDING_DIM={TINY_HIDDEN}"):
        load_article_encoder(settings)


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"query_model": "ncbi/no-such-model-in-cache"}, "MEDPG_QUERY_MODEL"),
        ({"article_model": "/nonexistent/models/medcpt-article"}, "MEDPG_ARTICLE_MODEL"),
        (
            {"model_profile": "sentence-transformers", "article_model": "acme/absent", "embedding_dim": 8},
            "MEDPG_ARTICLE_MODEL",
        ),
    ],
)
def test_missing_model_says_how_to_get_it(overrides: dict[str, object], setting: str) -> None:
    settings = Settings(_env_file=None, device="cpu", hf_offline=True, **overrides)  # type: ignore[arg-type]
    loader = load_query_encoder if "query_model" in overrides else load_article_encoder
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as err:
        loader(settings)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "medpg models download --profile" in message and "\n" not in message
    assert setting in message


def test_device_auto_picks_cpu_here() -> None:
    import torch

    from medpg.encoders.device import inference_dtype, resolve_device

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto") == "cpu"
    assert inference_dtype("cpu") == torch.float32
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_device("cuda:0")


def test_import_does_not_load_torch() -> None:
    code = "import medpg.encoders, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_token_budget_batches() -> None:
    lengths = [5, 300, 20, 512, 7, 100, 100, 1, 64]
    batches = token_budget_batches(lengths, max_batch_size=3, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest
        assert len(batch) == 1 or longest * len(batch) <= 400
    assert batches[0] == [3]  # longer than the budget: alone
    assert token_budget_batches([], 4, 100) == []


# --- sentence-transformers / packaged MiniLM -------------------------------------------------------


def test_minilm_ranks_a_relevant_medical_sentence_first() -> None:
    settings = st_settings()
    query = load_query_encoder(settings).encode_queries(["Do statins lower LDL cholesterol?"])[0]
    articles = load_article_encoder(settings)
    assert articles.dimension == 384 and articles.similarity == "cosine"
    docs = articles.encode_documents(
        ["Statin therapy and lipids", "Match report"],
        [
            "Atorvastatin reduced low-density lipoprotein cholesterol by 40% in adults with hyperlipidemia.",
            "The home team won the football match after a late goal in the second half.",
        ],
    )
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    relevant, unrelated = docs @ query
    assert relevant > unrelated + 0.2
    assert articles.model_name.startswith("all-MiniLM-L6-v2@")


def test_sentence_transformers_prefixes_are_applied() -> None:
    plain = load_article_encoder(st_settings())
    prefixed = load_article_encoder(st_settings(document_prefix="passage: "))
    query = load_query_encoder(st_settings(query_prefix="query: "))
    model = prefixed.model  # type: ignore[attr-defined]
    expected = model.encode(["passage: Fiber. dietary fiber and colon cancer"], normalize_embeddings=True)
    got = prefixed.encode_documents(["Fiber"], ["dietary fiber and colon cancer"])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(
        got, plain.encode_documents(["Fiber"], ["dietary fiber and colon cancer"]), atol=1e-3
    )
    np.testing.assert_allclose(
        query.encode_queries(["fiber"]), model.encode(["query: fiber"], normalize_embeddings=True), atol=1e-5
    )


def test_minilm_batches_equal_one_at_a_time() -> None:
    encoder = load_article_encoder(st_settings(encode_batch_size=3, max_tokens_per_batch=256))
    titles = [words(3, i) for i in range(7)]
    texts = [words(n, 50 + i) for i, n in enumerate([5, 200, 40, 90, 2, 150, 60])]
    batched = encoder.encode_documents(titles, texts)
    single = np.vstack([encoder.encode_documents([t], [x]) for t, x in zip(titles, texts, strict=True)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
