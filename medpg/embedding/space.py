"""The configured article model and the embedding space it writes into.

``embedding_space.model`` names the model whose vectors search uses. While the configured
article model differs from it (a model switch), vectors go to ``medpg.chunk_embeddings_staging``;
``medpg.embedding_mode`` in SQL (``migrations/sql/idempotent/070_embedding_state.sql``) is the
definition, ``mode_for`` its Python twin for messages and status.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg

from medpg.config import Settings
from medpg.errors import SchemaError

Mode = Literal["direct", "staging"]

_SPACE_MODEL = "SELECT model FROM medpg.embedding_space"
_SPACE_MODEL_FOR_SHARE = "SELECT model FROM medpg.embedding_space FOR SHARE"
_SPACE_MODEL_FOR_UPDATE = "SELECT model FROM medpg.embedding_space FOR UPDATE"
_LOCKS = {"": _SPACE_MODEL, "share": _SPACE_MODEL_FOR_SHARE, "update": _SPACE_MODEL_FOR_UPDATE}


def article_model_identity(settings: Settings) -> str:
    """The name the configured article encoder writes into ``chunks.embedding_model``, without torch.

    The same ``label@fingerprint`` the loaded encoder reports as ``model_name`` (medpg.encoders.hub).
    """
    from medpg.encoders.hub import locate_model, model_identity
    from medpg.encoders.profiles import resolve_profile

    return model_identity(locate_model(resolve_profile(settings).article_model))


def space_model(conn: psycopg.Connection[Any], *, lock: Literal["", "share", "update"] = "") -> str | None:
    """``embedding_space.model``: the model whose vectors search uses (None before the first embed)."""
    row = conn.execute(_LOCKS[lock]).fetchone()
    if row is None:
        raise SchemaError("medpg.embedding_space is empty: the schema is damaged; run `medpg db upgrade`")
    return row[0]


def mode_for(model: str, active: str | None) -> Mode:
    """Where vectors of ``model`` go: straight into chunks.embedding, or to staging during a switch."""
    return "direct" if active is None or active == model else "staging"


def name_first_model(conn: psycopg.Connection[Any], model: str, dimension: int) -> None:
    """Check the encoder's dimension against the space and name the first model of an empty space."""
    from medpg.encoders import check_dimension

    row = conn.execute("SELECT dimension FROM medpg.embedding_space").fetchone()
    if row is None:
        raise SchemaError("medpg.embedding_space is empty: run `medpg db upgrade`")
    check_dimension(dimension, int(row[0]), model)
    conn.execute("UPDATE medpg.embedding_space SET model = %s WHERE model IS NULL", (model,))
