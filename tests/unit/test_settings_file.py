"""The settings file (medpg.toml): where it is found, what it may hold, and what wins over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpg.config import SETTINGS_FILE_VARIABLE, Settings, load_settings, settings_file_path
from medpg.errors import ConfigError


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and config home, with no settings file named for the process."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(SETTINGS_FILE_VARIABLE, raising=False)
    return work


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_working_directory_file_is_read(workdir: Path) -> None:
    file = write(workdir / "medpg.toml", 'data_dir = "/srv/medpg"\nmodel_profile = "minilm"\n')
    settings = load_settings(_env_file=None)
    assert settings.settings_file == file.resolve()
    assert (settings.data_dir, settings.model_profile) == (Path("/srv/medpg"), "minilm")
    assert settings.chunk_tokens == 128  # the profile's defaults follow a profile from the file
    assert {"data_dir", "model_profile"} <= settings.explicit_fields


def test_the_user_config_file_is_read_when_the_working_directory_has_none(workdir: Path) -> None:
    config = workdir.parent / "config" / "medpg" / "medpg.toml"
    write(config, "rrf_k = 7\n")
    assert load_settings(_env_file=None).rrf_k == 7
    write(workdir / "medpg.toml", "rrf_k = 9\n")  # the working directory's file comes first
    assert load_settings(_env_file=None).rrf_k == 9


def test_no_file_means_defaults(workdir: Path) -> None:
    settings = load_settings(_env_file=None)
    assert settings.settings_file is None
    assert settings.model_profile == "medcpt"


def test_environment_dotenv_and_arguments_win_over_the_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(workdir / "medpg.toml", "rrf_k = 7\ncandidates = 70\ndense_weight = 0.7\nlexical_weight = 0.7\n")
    write(workdir / ".env", "MEDPG_CANDIDATES=80\nMEDPG_DENSE_WEIGHT=0.8\n")
    monkeypatch.setenv("MEDPG_DENSE_WEIGHT", "0.9")
    settings = load_settings(lexical_weight=0.1)
    assert (settings.rrf_k, settings.candidates, settings.dense_weight, settings.lexical_weight) == (
        7,
        80,
        0.9,
        0.1,
    )


def test_an_unknown_key_is_refused_with_the_file_and_the_closest_setting(workdir: Path) -> None:
    file = write(workdir / "medpg.toml", 'data_dri = "/srv/medpg"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    assert str(caught.value) == f"unknown setting data_dri in {file.resolve()}; did you mean data_dir?"


def test_a_prefixed_key_is_pointed_at_its_bare_name(workdir: Path) -> None:
    write(workdir / "medpg.toml", 'MEDPG_MODEL_PROFILE = "minilm"\n[search]\nk = 1\n')
    with pytest.raises(ConfigError, match=r"MEDPG_MODEL_PROFILE \(did you mean model_profile\?\), search"):
        Settings(_env_file=None)


def test_an_invalid_value_names_the_variable_and_the_file(workdir: Path) -> None:
    file = write(workdir / "medpg.toml", 'chunk_tokens = "many"\n')
    with pytest.raises(ConfigError, match=rf"MEDPG_CHUNK_TOKENS \(chunk_tokens in {file.resolve()}\)"):
        load_settings(_env_file=None)


def test_broken_toml_names_the_file(workdir: Path) -> None:
    file = write(workdir / "medpg.toml", "chunk_tokens =\n")
    with pytest.raises(ConfigError, match=f"the settings file {file.resolve()} is not valid TOML"):
        load_settings(_env_file=None)


def test_relative_paths_are_relative_to_the_file(workdir: Path, tmp_path: Path) -> None:
    config = write(workdir.parent / "config" / "medpg" / "medpg.toml", 'data_dir = "data"\n')
    assert load_settings(_env_file=None).data_dir == config.parent.resolve() / "data"


def test_the_argument_chooses_or_disables_the_file(workdir: Path, tmp_path: Path) -> None:
    write(workdir / "medpg.toml", "rrf_k = 7\n")
    other = write(tmp_path / "elsewhere.toml", "rrf_k = 8\n")
    assert load_settings(_env_file=None, _settings_file=other).rrf_k == 8
    assert load_settings(_env_file=None, _settings_file=None).rrf_k == 60
    with pytest.raises(ConfigError, match="the settings file .*missing.toml does not exist"):
        load_settings(_env_file=None, _settings_file=tmp_path / "missing.toml")


def test_the_test_variable_chooses_or_disables_the_file(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(workdir / "medpg.toml", "rrf_k = 7\n")
    monkeypatch.setenv(SETTINGS_FILE_VARIABLE, "")
    assert settings_file_path() is None
    assert load_settings(_env_file=None).rrf_k == 60
    monkeypatch.setenv(SETTINGS_FILE_VARIABLE, str(write(tmp_path / "suite.toml", "rrf_k = 5\n")))
    assert load_settings(_env_file=None).rrf_k == 5


def test_a_copy_keeps_the_files_values_and_reads_no_file_again(workdir: Path) -> None:
    file = write(workdir / "medpg.toml", 'model_profile = "minilm"\n')
    settings = load_settings(_env_file=None)
    file.write_text('model_profile = "medcpt"\nrrf_k = 3\n', encoding="utf-8")
    copy = settings.with_changes(candidates=10)
    assert (copy.model_profile, copy.rrf_k, copy.candidates, copy.settings_file) == (
        "minilm",
        60,
        10,
        file.resolve(),
    )
