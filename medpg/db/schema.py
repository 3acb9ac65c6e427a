"""What the database holds compared with what the configuration expects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medpg.errors import DatabaseError, SchemaMismatchError

if TYPE_CHECKING:
    from medpg.db.engine import Database


@dataclass(frozen=True)
class SchemaState:
    revision: str | None
    head: str
    column_dimension: int | None
    similarity: str | None
    active_model: str | None

    @property
    def up_to_date(self) -> bool:
        return self.revision == self.head


def schema_state(db: Database) -> SchemaState:
    from medpg.db.migrate import current_revision, head_revision

    revision = current_revision(db)
    dim = similarity = model = None
    if revision is not None:
        with db.connect() as conn:
            row = conn.execute(
                """
                SELECT format_type(a.atttypid, a.atttypmod)
                FROM pg_attribute a
                WHERE a.attrelid = 'medpg.chunks'::regclass AND a.attname = 'embedding'
                """
            ).fetchone()
            if row is not None:
                match = re.fullmatch(r"vector\((\d+)\)", row[0])
                dim = int(match.group(1)) if match else None
            space = conn.execute("SELECT similarity, model FROM medpg.embedding_space").fetchone()
            if space is not None:
                similarity, model = space
    return SchemaState(revision, head_revision(), dim, similarity, model)


def check_schema(db: Database) -> SchemaState:
    """Fail with a clear message unless the schema is migrated and matches the configured encoder."""
    from medpg.encoders.profiles import resolve_profile

    state = schema_state(db)
    if state.revision is None:
        raise DatabaseError(f"the database {db.describe()} has no medpg schema yet: run `medpg db upgrade`")
    if not state.up_to_date:
        raise DatabaseError(
            f"the database schema is at revision {state.revision}, this medpg needs {state.head}: "
            "run `medpg db upgrade`"
        )
    profile = resolve_profile(db.settings)
    if state.column_dimension is not None and state.column_dimension != profile.dimension:
        raise SchemaMismatchError(
            f"the configured article encoder {profile.article_model!r} makes {profile.dimension}-dimensional "
            f"vectors but medpg.chunks.embedding is vector({state.column_dimension}); vectors are never "
            "truncated or padded. Use a model with that dimension (MEDPG_MODEL_PROFILE / MEDPG_EMBEDDING_DIM), "
            "or a fresh database (MEDPG_DATA_DIR or MEDPG_DATABASE_URL)"
        )
    if state.similarity is not None and state.similarity != profile.similarity:
        raise SchemaMismatchError(
            f"the configured similarity is {profile.similarity!r} but the HNSW index was built for "
            f"{state.similarity!r}; set MEDPG_SIMILARITY={state.similarity} or use a fresh database"
        )
    return state
