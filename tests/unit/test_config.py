"""Settings: validated once, bad or unknown values named."""

from __future__ import annotations

import pytest

from medpg.config import load_settings
from medpg.errors import ConfigError


def test_defaults_are_the_medcpt_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env_file=None)
    assert settings.model_profile == "medcpt"
    assert settings.database_url is None  # embedded PostgreSQL


def test_unknown_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPG_DATABSE_URL", "postgresql://x")  # misspelt
    with pytest.raises(ConfigError, match="MEDPG_DATABSE_URL"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MEDPG_CHUNK_TOKENS", "many"),
        ("MEDPG_MODEL_PROFILE", "gpt"),
        ("MEDPG_DEVICE", "tpu"),
        ("MEDPG_RRF_K", "0"),
        ("MEDPG_BM25_B", "1.5"),
    ],
)
def test_invalid_value_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(_env_file=None)


def test_overlap_must_be_smaller_than_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPG_CHUNK_TOKENS", "64")
    monkeypatch.setenv("MEDPG_CHUNK_OVERLAP", "64")
    with pytest.raises(ConfigError, match="MEDPG_CHUNK_OVERLAP"):
        load_settings(_env_file=None)


def test_minilm_profile_fits_its_256_token_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "minilm")
    settings = load_settings(_env_file=None)
    assert (settings.article_max_tokens, settings.chunk_tokens, settings.chunk_overlap) == (256, 128, 32)
    monkeypatch.setenv("MEDPG_CHUNK_TOKENS", "200")  # an explicit value wins over the profile's
    settings = load_settings(_env_file=None)
    assert (settings.article_max_tokens, settings.chunk_tokens, settings.chunk_overlap) == (256, 200, 32)
    monkeypatch.setenv("MEDPG_CHUNK_TOKENS", "24")
    with pytest.raises(ConfigError, match=r"MEDPG_CHUNK_OVERLAP \(32, the minilm default\)"):
        load_settings(_env_file=None)
    monkeypatch.setenv("MEDPG_MODEL_PROFILE", "medcpt")
    monkeypatch.delenv("MEDPG_CHUNK_TOKENS")
    settings = load_settings(_env_file=None)
    assert (settings.article_max_tokens, settings.chunk_tokens, settings.chunk_overlap) == (512, 384, 64)
