"""Encoders: query, article and cross-encoder roles behind one small interface each.

``load_query_encoder`` / ``load_article_encoder`` / ``load_cross_encoder`` turn settings into a
loaded encoder, cached per process per model configuration, so the CLI, the API, the Celery
worker and benchmarks share one implementation and load each model once. Importing this package
is cheap: torch, transformers and sentence-transformers are imported only when a model loads.
"""

from __future__ import annotations

from functools import lru_cache
from typing import cast

from medpg.config import Settings
from medpg.encoders.base import (
    ArticleEncoder,
    CrossEncoder,
    EncoderSpec,
    QueryEncoder,
    RerankCandidate,
    check_dimension,
    document_text,
)
from medpg.encoders.hub import ModelLocation, download_model, locate_model, model_identity
from medpg.encoders.profiles import Profile, packaged_minilm_path, resolve_profile
from medpg.vocabulary import EncoderRole

__all__ = [
    "ArticleEncoder",
    "CrossEncoder",
    "EncoderSpec",
    "ModelLocation",
    "Profile",
    "QueryEncoder",
    "RerankCandidate",
    "check_dimension",
    "clear_encoder_cache",
    "document_text",
    "download_model",
    "encoder_spec",
    "load_article_encoder",
    "load_cross_encoder",
    "load_query_encoder",
    "locate_model",
    "model_identity",
    "packaged_minilm_path",
    "resolve_profile",
]


def encoder_spec(settings: Settings, role: EncoderRole) -> EncoderSpec | None:
    """The hashable description of one role's encoder (None: the profile has no cross-encoder)."""
    from medpg.encoders.device import resolve_device

    profile = resolve_profile(settings)
    models = {"query": profile.query_model, "article": profile.article_model}
    model = models.get(role, profile.cross_encoder_model)
    if model is None:
        return None
    max_tokens = {
        "query": settings.query_max_tokens,
        "article": settings.article_max_tokens,
        "cross": settings.cross_encoder_max_tokens,
    }[role]
    prefix = {"query": profile.query_prefix, "article": profile.document_prefix, "cross": ""}[role]
    return EncoderSpec(
        role=role,
        kind=profile.kind,
        model=model,
        profile=profile.name,
        device=resolve_device(settings.device),
        hf_offline=settings.hf_offline,
        max_tokens=max_tokens,
        batch_size=settings.encode_batch_size,
        max_tokens_per_batch=settings.max_tokens_per_batch,
        prefix=prefix,
        dimension=profile.dimension,
        similarity=profile.similarity,
        temperature=profile.cross_encoder_temperature,
    )


@lru_cache(maxsize=16)
def _build(spec: EncoderSpec) -> QueryEncoder | ArticleEncoder | CrossEncoder:
    if spec.kind == "medcpt":
        from medpg.encoders import medcpt

        classes: dict[str, type] = {
            "query": medcpt.MedCPTQueryEncoder,
            "article": medcpt.MedCPTArticleEncoder,
            "cross": medcpt.MedCPTCrossEncoder,
        }
    else:
        from medpg.encoders import st

        classes = {"query": st.STQueryEncoder, "article": st.STArticleEncoder, "cross": st.STCrossEncoder}
    encoder: QueryEncoder | ArticleEncoder | CrossEncoder = classes[spec.role](spec)
    return encoder


def load_query_encoder(settings: Settings) -> QueryEncoder:
    """The query encoder of the configured profile, loaded once per process."""
    spec = encoder_spec(settings, "query")
    if spec is None:  # pragma: no cover - every profile has a query encoder
        raise RuntimeError("profile without a query encoder")
    return cast(QueryEncoder, _build(spec))


def load_article_encoder(settings: Settings) -> ArticleEncoder:
    """The article encoder of the configured profile, loaded once per process."""
    spec = encoder_spec(settings, "article")
    if spec is None:  # pragma: no cover - every profile has an article encoder
        raise RuntimeError("profile without an article encoder")
    return cast(ArticleEncoder, _build(spec))


def load_cross_encoder(settings: Settings) -> CrossEncoder | None:
    """The cross-encoder of the configured profile, or None when reranking is off."""
    spec = encoder_spec(settings, "cross")
    if spec is None:
        return None
    return cast(CrossEncoder, _build(spec))


def clear_encoder_cache() -> None:
    """Forget loaded encoders (tests, or a process that switches models)."""
    import sys

    from medpg.encoders import hub

    _build.cache_clear()
    hub._digest.cache_clear()
    for module_name in ("medpg.encoders.medcpt", "medpg.encoders.st"):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for loader in ("load_backbone", "_load_bi_encoder", "_load_cross_encoder"):
            cached = getattr(module, loader, None)
            if cached is not None:
                cached.cache_clear()
