"""Settings cannot be bypassed: profile defaults come from validation, copies validate, test knobs stay out.

The settings object is frozen; ``with_changes`` (and ``model_copy(update=...)``, which goes through
it) validates again and never reads the environment; MEDPGTEST_ variables are not settings.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pydantic
import pytest

from medpg.config import PROFILE_DEFAULTS, Settings, load_settings, medpg_environment
from medpg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize("copy", ["with_changes", "model_copy"])
@pytest.mark.parametrize(
    "changes",
    [{"chunk_overlap": 128}, {"chunk_tokens": 32}, {"chunk_tokens": 64, "chunk_overlap": 64}],
)
def test_a_copy_with_overlap_not_below_the_window_is_refused(copy: str, changes: dict[str, int]) -> None:
    settings = make(model_profile="minilm")  # 128-token chunks overlapping by 32
    with pytest.raises(ConfigError, match="MEDPG_CHUNK_OVERLAP"):
        if copy == "with_changes":
            settings.with_changes(**changes)
        else:
            settings.model_copy(update=changes)


def test_a_copy_validates_every_field() -> None:
    with pytest.raises(ConfigError, match="MEDPG_RRF_K"):
        make().with_changes(rrf_k=0)
    with pytest.raises(ConfigError, match="no_such: Extra inputs"):
        make().with_changes(no_such=1)


def test_settings_are_frozen() -> None:
    settings = make()
    with pytest.raises(pydantic.ValidationError):
        settings.chunk_overlap = 10_000  # type: ignore[misc]


def test_profile_defaults_fill_only_what_was_not_given() -> None:
    minilm = make(model_profile="minilm")
    assert {k: getattr(minilm, k) for k in PROFILE_DEFAULTS["minilm"]} == PROFILE_DEFAULTS["minilm"]
    explicit = make(model_profile="minilm", chunk_tokens=200, chunk_overlap=10)
    assert (explicit.chunk_tokens, explicit.chunk_overlap, explicit.article_max_tokens) == (200, 10, 256)
    assert (make().chunk_tokens, make().chunk_overlap) == (384, 64)


def test_a_copy_keeps_explicit_values_and_takes_the_new_profiles_defaults() -> None:
    minilm = make(model_profile="minilm", rrf_k=7)
    medcpt = minilm.with_changes(model_profile="medcpt")
    assert (medcpt.chunk_tokens, medcpt.chunk_overlap, medcpt.article_max_tokens, medcpt.rrf_k) == (
        384,
        64,
        512,
        7,
    )
    back = medcpt.with_changes(model_profile="minilm")
    assert (back.chunk_tokens, back.chunk_overlap, back.article_max_tokens) == (128, 32, 256)
    pinned = make(model_profile="minilm", chunk_tokens=200).with_changes(model_profile="medcpt")
    assert (pinned.chunk_tokens, pinned.chunk_overlap) == (200, 64)  # explicit stays, default follows
    assert minilm.with_changes() == minilm and minilm.model_copy() == minilm


def test_a_copy_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = make()
    monkeypatch.setenv("MEDPG_RRF_K", "5")
    monkeypatch.setenv("MEDPG_CHUNK_OVERLAP", "9999")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MEDPG_DENSE_WEIGHT=9\n", encoding="utf-8")
    copy = settings.with_changes(lexical_weight=0.25)
    assert (copy.rrf_k, copy.chunk_overlap, copy.dense_weight, copy.lexical_weight) == (60, 64, 0.5, 0.25)
    with pytest.raises(ConfigError, match="MEDPG_CHUNK_OVERLAP"):  # while load_settings does read it
        load_settings()


def test_medpgtest_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPGTEST_DATA_DIR", "/nowhere")
    monkeypatch.setenv("MEDPGTEST_FAULT_MARKER", "zz")
    settings = load_settings(_env_file=None)
    assert settings.model_profile == "medcpt"
    assert "MEDPGTEST_DATA_DIR" not in medpg_environment()


def test_unknown_medpg_setting_still_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPG_EMBED_FAULT_MARKER", "zz")  # fault injection is no longer a setting
    with pytest.raises(ConfigError, match="unknown setting.*MEDPG_EMBED_FAULT_MARKER"):
        load_settings(_env_file=None)


def _environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read os.environ / os.getenv (writes such as ``os.environ[k] = v`` allowed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    writes = {
        id(target.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AugAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Subscript)
    }
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and id(node) not in writes:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id in ("environ", "getenv"):
            lines.append(node.lineno)
    return lines


def test_only_config_reads_the_environment() -> None:
    reads = {
        str(path.relative_to(REPO)): lines
        for root in ("medpg", "workers")
        for path in sorted((REPO / root).rglob("*.py"))
        if path != REPO / "medpg" / "config.py" and (lines := _environment_reads(path))
    }
    assert reads == {}, f"environment read outside medpg/config.py: {reads}"
