"""Database access: the engine (embedded or external PostgreSQL), migrations and schema checks."""

from medpg.db.engine import Database, register_vector_types
from medpg.db.schema import SchemaState, check_schema, schema_state

__all__ = ["Database", "SchemaState", "check_schema", "register_vector_types", "schema_state"]
