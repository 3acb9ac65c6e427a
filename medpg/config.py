"""medpg settings: one validated object, built on demand and passed down.

Every knob is an environment variable with the ``MEDPG_`` prefix (or a line in ``.env``).
This is the only module that reads the environment. ``get_settings()`` builds the object
lazily so tests and tools can make their own with ``Settings(...)``.

A Settings object cannot hold values that validation would refuse: it is frozen, a model profile's
defaults are filled in during validation, and copies are made with ``with_changes`` (also what
``model_copy(update=...)`` does here), which validates again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ModelWrapValidatorHandler, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from medpg.errors import ConfigError
from medpg.vocabulary import FusionMethod, LexicalScorer, ModelProfile, SearchMode, Similarity

ENV_PREFIX = "MEDPG_"

# Set while a copy is validated: its values come from the original, never from the environment.
_COPYING: ContextVar[bool] = ContextVar("medpg_settings_copying", default=False)


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
    fusion: FusionMethod = "weighted"
    rrf_k: int = Field(default=60, ge=1, le=10_000, description="RRF constant (the SQL refuses others).")
    dense_weight: float = Field(default=0.5, ge=0, le=1000, allow_inf_nan=False)
    lexical_weight: float = Field(default=0.5, ge=0, le=1000, allow_inf_nan=False)
    candidates: int = Field(default=100, ge=1, le=10_000, description="Candidates per retriever.")
    rerank_top_k: int = Field(default=50, ge=0, le=1000)
    hnsw_ef_search: int = Field(default=100, ge=1, le=1000)
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

    # Names whose value came from PROFILE_DEFAULTS, not from the caller or the environment.
    _profile_filled: frozenset[str] = PrivateAttr(default=frozenset())

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
        explicit = self.model_fields_set - self._profile_filled
        data = {name: getattr(self, name) for name in explicit}
        data.update(changes)
        try:
            with _from_arguments_only():
                return type(self)(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then MEDPG_ variables, then ``.env``; a copy reads its arguments only."""
        if _COPYING.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

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


def _profile_defaults_for(data: Mapping[str, Any]) -> dict[str, int]:
    """The defaults of the profile named in ``data`` (or the default profile) that ``data`` lacks."""
    profile = data.get("model_profile", Settings.model_fields["model_profile"].default)
    defaults = PROFILE_DEFAULTS.get(str(profile), {})
    return {name: value for name, value in defaults.items() if name not in data}


def _unknown_env_vars(environ: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def load_settings(**overrides: object) -> Settings:
    """Build and validate settings; a bad or unknown value raises ConfigError naming it."""
    unknown = _unknown_env_vars(dict(os.environ))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; "
            f"known MEDPG_ settings: {', '.join(sorted(ENV_PREFIX + n.upper() for n in Settings.model_fields))}"
        )
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _config_error(exc) from None


def _config_error(exc: ValidationError) -> ConfigError:
    """One ConfigError naming every refused value by its MEDPG_ variable."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        if not field:  # a rule across fields: its message names them (the input holds every value)
            problems.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        name = ENV_PREFIX + field.upper() if field in Settings.model_fields else field
        problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError("invalid setting: " + "; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use (never at import)."""
    return load_settings()


__all__ = [
    "ENV_PREFIX",
    "PROFILE_DEFAULTS",
    "FusionMethod",
    "LexicalScorer",
    "ModelProfile",
    "SearchMode",
    "Settings",
    "Similarity",
    "get_settings",
    "hf_environment",
    "load_settings",
]


def hf_environment(settings: Settings) -> dict[str, str]:
    """Environment for Hugging Face libraries so no code path reaches a hub when offline."""
    if settings.hf_offline:
        return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return {}
