"""medpg settings: one validated object, built on demand and passed down.

Every knob is an environment variable with the ``MEDPG_`` prefix, a line in ``.env``, or a key
(the name without the prefix) in a settings file, ``medpg.toml``. Sources, strongest first:
arguments, ``MEDPG_`` variables, ``.env``, the settings file, the defaults. This is the only module
that reads the environment. ``get_settings()`` builds the object lazily so tests and tools can make
their own with ``Settings(...)``.

The settings file is ``./medpg.toml``, else ``$XDG_CONFIG_HOME/medpg/medpg.toml`` (default
``~/.config/medpg/medpg.toml``). ``Settings(_settings_file=path)`` names another one and
``_settings_file=None`` reads none; so does the variable ``MEDPGTEST_SETTINGS_FILE`` (empty: none),
which test suites set so a developer's file cannot change what they see.

A Settings object cannot hold values that validation would refuse: it is frozen, a model profile's
defaults are filled in during validation, and copies are made with ``with_changes`` (also what
``model_copy(update=...)`` does here), which validates again.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from medpg.errors import ConfigError
from medpg.vocabulary import (
    FeedbackMethod,
    FusionMethod,
    LexicalScorer,
    ModelProfile,
    SearchMode,
    Similarity,
)

ENV_PREFIX = "MEDPG_"
SETTINGS_FILE_NAME = "medpg.toml"
# Names the settings file for a whole process (empty: none). Outside the MEDPG_ namespace: it is a
# knob for test suites, not a setting.
SETTINGS_FILE_VARIABLE = "MEDPGTEST_SETTINGS_FILE"

# Set while a copy is validated: its values come from the original, never from the environment.
_COPYING: ContextVar[bool] = ContextVar("medpg_settings_copying", default=False)


class _Unset:
    """The ``_settings_file`` argument was not given: look the file up."""

    def __repr__(self) -> str:
        return "<look up medpg.toml>"


UNSET = _Unset()
SettingsFileChoice = Path | str | None | _Unset


@dataclass
class _Build:
    """What one ``Settings(...)`` call asked for and which settings file it read."""

    choice: SettingsFileChoice
    file: Path | None = None


_BUILD: ContextVar[_Build | None] = ContextVar("medpg_settings_build", default=None)


def _default_data_dir() -> Path:
    return Path.home() / ".medpg"


def _default_datasets_dir() -> Path:
    # ../shared/data beside the checkout, where development data lives.
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


# Where a model profile needs other defaults than the global ones (MedCPT's). all-MiniLM-L6-v2 reads
# at most 256 tokens, so 384-token chunks would lose their ends; 128-token chunks overlapping by 32
# were its best on NFCorpus dev (README, "Evaluation"). A value set explicitly always wins.
PROFILE_DEFAULTS: dict[str, dict[str, int]] = {
    "minilm": {"article_max_tokens": 256, "chunk_tokens": 128, "chunk_overlap": 32},
}


class Settings(BaseSettings):
    """All medpg configuration. Field ``foo`` is read from ``MEDPG_FOO``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # --- database -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:pass@host:port/db). Unset: the embedded server.",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded PostgreSQL keeps its data directory.",
    )
    embedded_database: str = Field(default="medpg", pattern=r"^[a-z_][a-z0-9_]*$")
    datasets_dir: Path = Field(
        default_factory=_default_datasets_dir,
        description="Where evaluation data sets (BEIR NFCorpus, notes) live.",
    )

    # --- models -------------------------------------------------------------------------
    model_profile: ModelProfile = "medcpt"
    query_model: str | None = Field(default=None, description="Override the profile's query encoder.")
    article_model: str | None = Field(default=None, description="Override the profile's article encoder.")
    cross_encoder_model: str | None = Field(
        default=None, description="Override the profile's cross-encoder; 'none' turns reranking off."
    )
    query_prefix: str = Field(default="", description="Prepended to queries (BGE/E5 style).")
    document_prefix: str = Field(default="", description="Prepended to documents (E5 style).")
    cross_encoder_temperature: float = Field(default=1.0, gt=0)
    embedding_dim: int | None = Field(
        default=None, ge=1, le=16000, description="Vector dimension; unset: the profile's own."
    )
    similarity: Similarity | None = Field(default=None, description="Unset: the profile's own.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    query_max_tokens: int = Field(default=64, ge=8, le=8192)
    article_max_tokens: int = Field(default=512, ge=16, le=8192)
    cross_encoder_max_tokens: int = Field(default=512, ge=16, le=8192)
    encode_batch_size: int = Field(default=32, ge=1, le=4096)
    max_tokens_per_batch: int = Field(default=8192, ge=64)
    hf_offline: bool = Field(default=True, description="Never reach a model hub at run time.")

    # --- ingest and chunking ------------------------------------------------------------
    ingest_batch_size: int = Field(default=1000, ge=1, le=100_000)
    ingest_workers: int = Field(
        default=2, ge=1, le=32, description="Batches written concurrently, each on its own connection."
    )
    max_document_bytes: int = Field(default=2_000_000, ge=1)
    chunk_tokens: int = Field(default=384, ge=16, le=8192, description="Tokens per chunk window.")
    chunk_overlap: int = Field(default=64, ge=0, description="Tokens shared by neighbouring windows.")
    chunk_tokenizer: str = Field(
        default="packaged",
        description="Tokenizer that counts chunk tokens: 'packaged' (BERT uncased WordPiece, offline) "
        "or a model name / directory.",
    )

    # --- background embedding -------------------------------------------------------------
    broker_url: str | None = Field(default=None, description="Celery broker, e.g. redis://127.0.0.1:6379/0")
    embed_queue: str = "medpg.embed"
    embed_claim_size: int = Field(default=64, ge=1, le=10_000)
    embed_lease_seconds: int = Field(default=600, ge=5)
    embed_max_attempts: int = Field(default=5, ge=1)
    reconcile_interval_seconds: int = Field(default=60, ge=1)
    control_queue: str = Field(
        default="medpg.control", description="Queue of the periodic reconcile task (needs no model)."
    )
    embed_retry_backoff_seconds: float = Field(
        default=10.0, ge=0, description="A chunk the encoder failed on is retried after this, doubling."
    )

    # --- search ---------------------------------------------------------------------------
    search_mode: SearchMode = "hybrid"
    lexical_scorer: LexicalScorer = "bm25"
    fusion: FusionMethod = Field(
        default="adaptive",
        description="adaptive: weighted min-max, lexical weight x the query's lexical coverage; weighted; rrf.",
    )
    rrf_k: int = Field(default=60, ge=1, le=10_000, description="RRF constant (the SQL refuses others).")
    dense_weight: float = Field(default=0.5, ge=0, le=1000, allow_inf_nan=False)
    lexical_weight: float = Field(default=0.5, ge=0, le=1000, allow_inf_nan=False)
    candidates: int = Field(default=100, ge=1, le=10_000, description="Candidates per retriever.")
    feedback: FeedbackMethod = Field(
        default="rocchio", description="Hybrid pseudo-relevance feedback on the query vector (none: off)."
    )
    feedback_docs: int = Field(default=3, ge=1, le=1000, description="Top fused documents fed back.")
    feedback_weight: float = Field(
        default=1.0, ge=0, le=1000, allow_inf_nan=False, description="Weight of their mean vector."
    )
    rerank_top_k: int = Field(default=50, ge=0, le=1000)
    hnsw_ef_search: int = Field(default=200, ge=1, le=1000)
    bm25_k1: float = Field(default=2.0, ge=1e-6, le=1000, allow_inf_nan=False)
    bm25_b: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False)
    bm25_title_weight: float = Field(
        default=2.0,
        ge=1e-6,
        le=1000,
        allow_inf_nan=False,
        description="BM25F-style weight of title terms (1: title counts like body; > 0: no division by 0).",
    )
    ts_rank_cover_density: bool = Field(
        default=False, description="ts_rank scorer: ts_rank_cd (cover density) instead of ts_rank."
    )
    ts_rank_normalization: int = Field(default=0, ge=0, le=63, description="ts_rank normalization bits.")
    max_query_chars: int = Field(default=16_384, ge=1, le=1_000_000)
    rerank_weight: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Final score weight of the calibrated cross-encoder score.",
    )
    rerank_dense_weight: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Final score weight of the min-max-normalized dense score.",
    )
    rerank_lexical_weight: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Final score weight of the min-max-normalized lexical score.",
    )

    # --- privacy --------------------------------------------------------------------------
    log_text: bool = Field(default=False, description="Allow document and query text in logs.")

    # --- service (medpg serve) ------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Address `medpg serve` listens on.")
    api_port: int = Field(default=8750, ge=1, le=65535, description="Port `medpg serve` listens on.")
    api_url: str | None = Field(
        default=None,
        description="A running medpg service (`medpg search` uses it); unset: http://{api_host}:{api_port}.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="The API key `medpg search` sends to a running service."
    )
    api_max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body the API accepts (413 above)."
    )
    audit_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for the query hashes of audit rows; unset: a key kept in the database.",
    )

    # Names whose value came from PROFILE_DEFAULTS, not from the caller or the environment.
    _profile_filled: frozenset[str] = PrivateAttr(default=frozenset())
    # The settings file this object's values were read from, if any.
    _file_read: Path | None = PrivateAttr(default=None)

    def __init__(self, _settings_file: SettingsFileChoice = UNSET, **values: Any) -> None:
        """Build from ``values`` and the environment; ``_settings_file`` chooses the settings file.

        ``_settings_file``: a path (it must exist), None for no file, or unset to look the file up
        (``settings_file_path``).
        """
        build = _Build(_settings_file)
        token = _BUILD.set(build)
        try:
            super().__init__(**values)
        finally:
            _BUILD.reset(token)
        self._file_read = build.file

    @property
    def settings_file(self) -> Path | None:
        """The settings file (``medpg.toml``) these values were read from; None when none was."""
        return self._file_read

    @property
    def explicit_fields(self) -> frozenset[str]:
        """Names set by an argument, a variable, ``.env`` or the settings file (not defaults)."""
        return frozenset(self.model_fields_set - self._profile_filled)

    @model_validator(mode="wrap")
    @classmethod
    def _apply_profile_defaults(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """Fill in the profile's defaults for fields not set explicitly, then validate everything.

        The defaults go in before field validation, so they are checked like any other value and
        never written into a built object.
        """
        filled = _profile_defaults_for(data) if isinstance(data, Mapping) else {}
        settings = handler({**data, **filled} if filled else data)
        settings._profile_filled = frozenset(filled)
        settings._check_overlap()
        return settings

    def _check_overlap(self) -> None:
        if self.chunk_overlap >= self.chunk_tokens:
            implied = f", the {self.model_profile} default" if "chunk_overlap" in self._profile_filled else ""
            raise ValueError(
                f"MEDPG_CHUNK_OVERLAP ({self.chunk_overlap}{implied}) must be smaller than "
                f"MEDPG_CHUNK_TOKENS ({self.chunk_tokens})"
            )

    def with_changes(self, **changes: Any) -> Settings:
        """A validated copy with ``changes``; a value validation refuses raises ConfigError.

        Fields set explicitly here keep their values; those a model profile filled in are filled
        in again for the copy's profile, so changing ``model_profile`` brings its own defaults.
        """
        data = {name: getattr(self, name) for name in self.explicit_fields}
        data.update(changes)
        try:
            with _from_arguments_only():
                copy = type(self)(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None
        copy._file_read = self._file_read
        return copy

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, MEDPG_ variables, ``.env``, then the settings file; a copy reads its arguments only."""
        if _COPYING.get():
            return (init_settings,)
        build = _BUILD.get()
        path = settings_file_path(build.choice if build is not None else UNSET)
        if path is None:
            return (init_settings, env_settings, dotenv_settings, file_secret_settings)
        if build is not None:
            build.file = path
        file_settings = SettingsFileSource(settings_cls, path)
        return (init_settings, env_settings, dotenv_settings, file_settings, file_secret_settings)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """A copy; with ``update`` it is ``with_changes(**update)``, validated like any Settings."""
        if update:
            return self.with_changes(**update)
        return super().model_copy(deep=deep)


@contextmanager
def _from_arguments_only() -> Iterator[None]:
    token = _COPYING.set(True)
    try:
        yield
    finally:
        _COPYING.reset(token)


def settings_file_path(choice: SettingsFileChoice = UNSET) -> Path | None:
    """The settings file a build reads, or None.

    ``choice`` (a path, or None for none) wins; then ``MEDPGTEST_SETTINGS_FILE`` (empty: none);
    then ``./medpg.toml``; then ``$XDG_CONFIG_HOME/medpg/medpg.toml`` (``~/.config`` when unset).
    A file named by ``choice`` or the variable must exist: a typo should not silently mean defaults.
    """
    if isinstance(choice, _Unset):
        named = os.environ.get(SETTINGS_FILE_VARIABLE)
        if named is None:
            return _discovered_settings_file()
        choice = named.strip() or None
    if choice is None:
        return None
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(f"the settings file {path} does not exist")
    return path.resolve()


def _discovered_settings_file() -> Path | None:
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    config_home = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    for candidate in (Path.cwd() / SETTINGS_FILE_NAME, config_home / "medpg" / SETTINGS_FILE_NAME):
        if candidate.is_file():
            return candidate.resolve()
    return None


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a mistyped one (difflib), or None when none is close."""
    matches = difflib.get_close_matches(name, list(known), n=1)
    return matches[0] if matches else None


def _did_you_mean(match: str | None) -> str:
    if match is None:
        return " (no setting has a similar name; README, 'Configuration', lists them)"
    return f"; did you mean {match}?"


def _file_key_suggestion(key: str) -> str | None:
    """The setting a mistyped settings-file key most likely means (``MEDPG_DATA_DIR`` -> data_dir)."""
    lowered = key.lower()
    bare = lowered.removeprefix(ENV_PREFIX.lower())
    if bare in Settings.model_fields:
        return bare
    return closest_name(bare, Settings.model_fields)


_PATH_FIELDS = frozenset(name for name, field in Settings.model_fields.items() if field.annotation is Path)


class SettingsFileSource(TomlConfigSettingsSource):
    """``medpg.toml``: keys are setting names without the prefix; an unknown key is refused by name.

    A relative path (``data_dir = "demo"``) is relative to the file's directory, so a file means
    the same wherever medpg is run from.
    """

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.path = path
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the settings file {file_path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the settings file {file_path}: {exc}") from None
        return checked_file_values(Path(str(file_path)), data)


def checked_file_values(path: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings file's values, paths made absolute; ConfigError naming every unknown key."""
    unknown = [key for key in data if key not in Settings.model_fields]
    if len(unknown) == 1:
        key = unknown[0]
        raise ConfigError(f"unknown setting {key} in {path}{_did_you_mean(_file_key_suggestion(key))}")
    if unknown:
        raise ConfigError(f"unknown settings in {path}: {_listed(unknown, _file_key_suggestion)}")
    values = dict(data)
    for name in _PATH_FIELDS & values.keys():
        if isinstance(values[name], str):
            value = Path(values[name]).expanduser()
            values[name] = value if value.is_absolute() else path.parent / value
    return values


def _profile_defaults_for(data: Mapping[str, Any]) -> dict[str, int]:
    """The defaults of the profile named in ``data`` (or the default profile) that ``data`` lacks."""
    profile = data.get("model_profile", Settings.model_fields["model_profile"].default)
    defaults = PROFILE_DEFAULTS.get(str(profile), {})
    return {name: value for name, value in defaults.items() if name not in data}


def _unknown_env_vars(environ: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def unknown_setting_message(unknown: Iterable[str]) -> str:
    """``unknown setting MEDPG_X; did you mean MEDPG_Y?`` for mistyped MEDPG_ variables."""
    names = list(unknown)

    def suggest(name: str) -> str | None:
        # Compared without the shared prefix, which would make every name look close.
        match = closest_name(name.upper().removeprefix(ENV_PREFIX).lower(), Settings.model_fields)
        return ENV_PREFIX + match.upper() if match else None

    if len(names) == 1:
        return f"unknown setting {names[0]}{_did_you_mean(suggest(names[0]))}"
    return f"unknown settings {_listed(names, suggest)}"


def _listed(names: Iterable[str], suggest: Callable[[str], str | None]) -> str:
    """``A (did you mean B?), C``: several mistyped names, each with its closest match."""
    parts = []
    for name in names:
        match = suggest(name)
        parts.append(f"{name} (did you mean {match}?)" if match else name)
    return ", ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Build and validate settings; a bad or unknown value raises ConfigError naming it."""
    unknown = _unknown_env_vars(dict(os.environ))
    if unknown:
        raise ConfigError(unknown_setting_message(unknown))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        choice = overrides.get("_settings_file", UNSET)
        raise _config_error(exc, _keys_from_file(choice, overrides)) from None  # type: ignore[arg-type]


def _keys_from_file(
    choice: SettingsFileChoice, overrides: Mapping[str, object]
) -> tuple[Path, set[str]] | None:
    """The settings file and the keys whose value it supplied (no stronger source set them)."""
    path = settings_file_path(choice)
    if path is None:
        return None
    try:
        with path.open("rb") as fh:
            keys = set(tomllib.load(fh))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    environ = {k.upper() for k in os.environ}
    return path, {k for k in keys if k not in overrides and ENV_PREFIX + k.upper() not in environ}


def _config_error(exc: ValidationError, from_file: tuple[Path, set[str]] | None = None) -> ConfigError:
    """One ConfigError naming every refused value by its MEDPG_ variable (or settings-file key)."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        if not field:  # a rule across fields: its message names them (the input holds every value)
            problems.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        if err["type"] == "extra_forbidden" and field.upper().startswith(ENV_PREFIX):
            # A MEDPG_ line in .env that names no setting.
            problems.append(f"{unknown_setting_message([field.upper()])} (in .env)")
            continue
        if field in Settings.model_fields:
            name = ENV_PREFIX + field.upper()
            if from_file is not None and field in from_file[1]:
                name += f" ({field} in {from_file[0]})"
        else:
            name = field
        match = closest_name(field, Settings.model_fields) if err["type"] == "extra_forbidden" else None
        hint = _did_you_mean(match) if match else ""
        problems.append(f"{name}: {err['msg']} (got {err.get('input')!r}){hint}")
    return ConfigError("invalid setting: " + "; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use (never at import)."""
    return load_settings()


__all__ = [
    "ENV_PREFIX",
    "PROFILE_DEFAULTS",
    "SETTINGS_FILE_NAME",
    "SETTINGS_FILE_VARIABLE",
    "UNSET",
    "FusionMethod",
    "LexicalScorer",
    "ModelProfile",
    "SearchMode",
    "Settings",
    "Similarity",
    "closest_name",
    "get_settings",
    "hf_environment",
    "load_settings",
    "medpg_environment",
    "settings_file_path",
]


def medpg_environment() -> dict[str, str]:
    """The MEDPG_ variables set in this process, for reports that record how they were run."""
    return {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}


def hf_environment(settings: Settings) -> dict[str, str]:
    """Environment for Hugging Face libraries so no code path reaches a hub when offline."""
    if settings.hf_offline:
        return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return {}
