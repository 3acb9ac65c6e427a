"""What the database holds compared with what the configuration expects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medpg.errors import SchemaError, SchemaMismatchError
from medpg.vocabulary import Similarity

if TYPE_CHECKING:
    from medpg.db.engine import Database


@dataclass(frozen=True)
class EmbeddingSpace:
    """A vector space: what ``medpg.embedding_space`` stores and an article encoder produces.

    ``source`` names where the expectation comes from (a model), for error messages.
    """

    dimension: int
    similarity: Similarity
    source: str = "the configured article encoder"


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
    from medpg.db.revisions import current_revision, head_revision

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


def check_schema(db: Database, expected: EmbeddingSpace | None = None) -> SchemaState:
    """Fail with a clear message unless the schema is migrated and, given ``expected``, matches it.

    ``medpg.schema.check`` passes the configured model profile's space.
    """
    state = schema_state(db)
    if state.revision is None:
        raise SchemaError(f"the database {db.describe()} has no medpg schema yet: run `medpg db upgrade`")
    if not state.up_to_date:
        raise SchemaError(
            f"the database schema is at revision {state.revision}, this medpg needs {state.head}: "
            "run `medpg db upgrade`"
        )
    if expected is None:
        return state
    if state.column_dimension is not None and state.column_dimension != expected.dimension:
        raise SchemaMismatchError(
            f"{expected.source} makes {expected.dimension}-dimensional "
            f"vectors but medpg.chunks.embedding is vector({state.column_dimension}); vectors are never "
            "truncated or padded. Use a model with that dimension (MEDPG_MODEL_PROFILE / MEDPG_EMBEDDING_DIM), "
            "or a fresh database (MEDPG_DATA_DIR or MEDPG_DATABASE_URL)"
        )
    if state.similarity is not None and state.similarity != expected.similarity:
        raise SchemaMismatchError(
            f"the configured similarity is {expected.similarity!r} but the HNSW index was built for "
            f"{state.similarity!r}; set MEDPG_SIMILARITY={state.similarity} or use a fresh database"
        )
    return state
