"""Settings that follow the model a database's vectors were made with.

``medpg.embedding_space.model`` holds ``label@fingerprint`` (``medpg.encoders.hub.model_identity``).
When no model was chosen explicitly (no ``MEDPG_MODEL_PROFILE``, ``MEDPG_QUERY_MODEL`` or
``MEDPG_ARTICLE_MODEL`` in the environment, ``.env``, ``medpg.toml`` or the arguments), the
profile that loads the stored model on this machine is used, so a command run against the demo's
database with only ``MEDPG_DATA_DIR`` set continues with MiniLM instead of failing on the MedCPT
default. When no profile here loads it, the error names the settings to make. An explicit choice
always wins (a different model then means a model switch, handled by ``medpg.embedding``).

Nothing here imports torch: models are found on disk, never loaded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from medpg.config import Settings
from medpg.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from medpg.db.engine import Database

log = logging.getLogger(__name__)

#: Settings that choose the models; any of them set explicitly turns the stored-model lookup off.
MODEL_CHOICE = frozenset({"model_profile", "query_model", "article_model"})

_KEEP_IN_FILE = "(as variables, or as keys without the MEDPG_ prefix in medpg.toml)"


def model_choice_is_explicit(settings: Settings) -> bool:
    """True when the user chose the models (a variable, ``.env``, ``medpg.toml`` or an argument)."""
    return bool(MODEL_CHOICE & settings.explicit_fields)


def split_identity(identity: str) -> tuple[str, str]:
    """``label@fingerprint`` -> (label, fingerprint); fingerprint is "" when there is none."""
    label, at, fingerprint = identity.rpartition("@")
    return (label, fingerprint) if at else (identity, "")


def resolve_settings_for_database(settings: Settings, stored_model: str | None) -> Settings:
    """``settings`` with the profile that loads ``stored_model`` here, where none was chosen.

    Returns ``settings`` itself when the models were chosen explicitly, when the database holds no
    vectors yet (``stored_model`` None), or when the configured profile already names the stored
    model (MedCPT, the default: a missing copy is reported when it is loaded, with how to get it).
    Raises ModelNotAvailableError naming the settings to make when no profile here loads it.
    """
    if stored_model is None or model_choice_is_explicit(settings):
        return settings
    from medpg.encoders.hub import locate_model, model_identity
    from medpg.encoders.profiles import MEDCPT_ARTICLE, MINILM_NAME, looks_like_path, packaged_minilm_path

    label, _ = split_identity(stored_model)
    made_by = f"this database's vectors were made by {stored_model}"
    if label == MINILM_NAME:
        packaged = model_identity(locate_model(str(packaged_minilm_path())))
        if packaged == stored_model:
            return _switched(settings, stored_model, model_profile="minilm")
        raise ModelNotAvailableError(
            f"{made_by}, but the packaged {MINILM_NAME} here is {packaged} (other weights); set "
            "MEDPG_MODEL_PROFILE=sentence-transformers and MEDPG_ARTICLE_MODEL=/path/to/the/copy/that/made/them, "
            f"or MEDPG_MODEL_PROFILE=minilm to embed again with the packaged one {_KEEP_IN_FILE}"
        )
    if label == MEDCPT_ARTICLE:
        return (
            settings
            if settings.model_profile == "medcpt"
            else _switched(settings, stored_model, model_profile="medcpt")
        )
    if looks_like_path(label) or "/" not in label:
        raise ModelNotAvailableError(
            f"{made_by}, a model directory named {label!r}; set MEDPG_ARTICLE_MODEL=/path/to/{label} with "
            "MEDPG_MODEL_PROFILE=sentence-transformers (medcpt for a MedCPT copy), or choose another "
            f"model with MEDPG_MODEL_PROFILE and embed again {_KEEP_IN_FILE}"
        )
    location = locate_model(label)  # a hub name: only the local cache is looked at
    choose = f"MEDPG_MODEL_PROFILE=sentence-transformers and MEDPG_ARTICLE_MODEL={label}"
    if not location.available:
        raise ModelNotAvailableError(
            f"{made_by}, and {label} is not on this machine ({location.detail}); set {choose} and run "
            "`medpg models download --profile sentence-transformers` on a machine with hub access, or set "
            f"MEDPG_ARTICLE_MODEL=/path/to/a/local/copy {_KEEP_IN_FILE}"
        )
    cached = model_identity(location)
    if cached != stored_model:
        raise ModelNotAvailableError(
            f"{made_by}, but the cached {label} is another snapshot ({cached}); set {choose} to use it "
            f"(embedding then makes every vector again) {_KEEP_IN_FILE}"
        )
    return _switched(settings, stored_model, model_profile="sentence-transformers", article_model=label)


def _switched(settings: Settings, stored_model: str, **changes: str) -> Settings:
    log.info("using %s: the model that made this database's vectors (%s)", changes, stored_model)
    return settings.with_changes(**changes)


def stored_model(db: Database) -> str | None:
    """``medpg.embedding_space.model`` of ``db``; None before the schema or the first vector.

    An embedded data directory that does not exist yet holds no vectors: the server is not
    started just to find that out.
    """
    if db.embedded and not (db.settings.data_dir.expanduser() / "pgdata").is_dir():
        return None
    with db.connect() as conn:
        row = conn.execute("SELECT to_regclass('medpg.embedding_space') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return None
        model = conn.execute("SELECT model FROM medpg.embedding_space").fetchone()
    return None if model is None or model[0] is None else str(model[0])


def open_database(settings: Settings, *, strict: bool = False) -> Database:
    """A Database whose settings follow its stored model where no model was chosen.

    ``strict``: raise when the stored model cannot be loaded here; otherwise log that (with the
    settings to make) and keep ``settings``, so commands that need no model (lexical search,
    status, ingest) still run.
    """
    from medpg.db.engine import Database

    db = Database(settings)
    if model_choice_is_explicit(settings):
        return db
    try:
        db.settings = resolve_settings_for_database(settings, stored_model(db))
    except ModelNotAvailableError as exc:
        if strict:
            raise
        log.warning("%s", exc)
    return db


__all__ = [
    "MODEL_CHOICE",
    "model_choice_is_explicit",
    "open_database",
    "resolve_settings_for_database",
    "split_identity",
    "stored_model",
]
