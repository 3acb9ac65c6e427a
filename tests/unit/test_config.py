"""Settings: validated once, bad or unknown values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpg.config import SETTINGS_FILE_VARIABLE, load_settings
from medpg.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTINGS_FILE_VARIABLE, "")  # a medpg.toml in the checkout must not count


def test_defaults_are_the_medcpt_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env_file=None)
    assert settings.model_profile == "medcpt"
    assert settings.database_url is None  # embedded PostgreSQL


def test_unknown_setting_is_named_with_the_closest_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPG_DATABSE_URL", "postgresql://x")  # misspelt
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert str(caught.value) == "unknown setting MEDPG_DATABSE_URL; did you mean MEDPG_DATABASE_URL?"


def test_several_unknown_settings_each_get_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPG_DATADIR", "/x")
    monkeypatch.setenv("MEDPG_PROFILE", "minilm")
    monkeypatch.setenv("MEDPG_ZZZ", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert str(caught.value) == (
        "unknown settings MEDPG_DATADIR (did you mean MEDPG_DATA_DIR?), "
        "MEDPG_PROFILE (did you mean MEDPG_MODEL_PROFILE?), MEDPG_ZZZ"
    )


def test_an_unknown_setting_without_a_close_one_lists_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPG_ZZZ", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert message.startswith("unknown setting MEDPG_ZZZ (no setting has a similar name")
    assert "MEDPG_RRF_K" not in message


def test_an_unknown_setting_in_dotenv_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MEDPG_CHUNK_TOKEN=100\n", encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match=r"unknown setting MEDPG_CHUNK_TOKEN; did you mean MEDPG_CHUNK_TOKENS\? \(in \.env\)",
    ):
        load_settings()


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
