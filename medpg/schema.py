"""The schema as the configuration expects it: migrate and check with the configured vector space.

``medpg.db`` knows tables and revisions, not models; this module supplies the one fact that joins
them, the article encoder's dimension and similarity (from the model profile, without torch).
"""

from __future__ import annotations

from medpg.config import Settings
from medpg.db import Database
from medpg.db.schema import EmbeddingSpace, SchemaState, check_schema


def configured_space(settings: Settings) -> EmbeddingSpace:
    """The vector space of the configured article encoder."""
    from medpg.encoders.profiles import resolve_profile

    profile = resolve_profile(settings)
    return EmbeddingSpace(
        profile.dimension, profile.similarity, f"the configured article encoder {profile.article_model!r}"
    )


def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate to ``revision``; a new schema gets the configured encoder's vector space."""
    from medpg.db import migrate  # Alembic: imported only by commands that migrate

    migrate.upgrade(db, revision, configured_space(db.settings))


def check(db: Database) -> SchemaState:
    """Fail with a clear message unless the schema is current and fits the configured encoder."""
    return check_schema(db, configured_space(db.settings))


__all__ = ["EmbeddingSpace", "check", "configured_space", "upgrade"]
