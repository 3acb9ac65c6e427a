"""The HNSW index over chunk vectors, built the way ``medpg.embedding_space`` says.

``embedding_space`` (revision 0010) records the index's storage and graph parameters:

- ``index_storage``: ``'vector'`` indexes the column itself (``USING hnsw (embedding
  vector_ip_ops)``, or ``vector_cosine_ops`` for a cosine space); ``'halfvec'`` indexes the
  expression ``embedding::halfvec(D)`` (``halfvec_ip_ops`` / ``halfvec_cosine_ops``): half the
  size, the table keeps full-precision vectors. ``medpg.dense_search`` orders by the same
  expression then, so the planner uses the index, and scores the candidates with the stored
  full-precision vectors (migrations/sql/idempotent/040_dense_search.sql);
- ``hnsw_m`` and ``hnsw_ef_construction``: the graph's links per node and its build-time beam.

``rebuild_dense_index`` builds the index from those settings (changing them first when asked),
in parallel (``max_parallel_maintenance_workers``) with ``maintenance_work_mem`` sized to hold the
graph, and records the settings only when the index that matches them exists. With
``concurrently`` the new index is built beside the old one (``CREATE INDEX CONCURRENTLY``), the
two swap names in one short transaction together with the settings, and the old one is dropped
concurrently: search keeps working throughout, on the old index until the swap.

A model switch (``medpg.embedding.switch``) keeps the space's dimension and similarity, so the
index stays valid through it; its vectors change in place (``medpg db reindex`` afterwards
compacts a graph that a whole-table update left full of dead entries).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import psycopg

from medpg.db.engine import Database
from medpg.errors import ConfigError, DatabaseError, SchemaError

log = logging.getLogger(__name__)

Storage = Literal["vector", "halfvec"]
STORAGES: tuple[Storage, ...] = ("vector", "halfvec")
INDEX_NAME = "chunks_embedding_hnsw_idx"
_NEW = INDEX_NAME + "_new"
_OLD = INDEX_NAME + "_old"

# pgvector's limits (hnsw.c) and revision 0010's checks on embedding_space.
M_RANGE = (2, 100)
EF_CONSTRUCTION_RANGE = (4, 1000)
# HNSW indexes at most 2,000 dimensions of vector and 4,000 of halfvec.
MAX_DIMENSIONS: dict[str, int] = {"vector": 2000, "halfvec": 4000}
# maintenance_work_mem chosen when none is given: the estimated graph, within these bounds (MB).
AUTO_MEMORY_MB = (64, 4096)


@dataclass(frozen=True)
class IndexSpec:
    """What the dense index is made from: the space's vectors and the recorded graph settings."""

    dimension: int
    similarity: str  # 'ip' or 'cosine'
    storage: Storage
    m: int
    ef_construction: int

    @property
    def opclass(self) -> str:
        return f"{self.storage}_{'cosine' if self.similarity == 'cosine' else 'ip'}_ops"

    @property
    def key(self) -> str:
        """The indexed column or expression; dense search orders by exactly this."""
        return "embedding" if self.storage == "vector" else f"(embedding::halfvec({self.dimension}))"

    @property
    def operator(self) -> str:
        """The distance operator the index orders by."""
        return "<=>" if self.similarity == "cosine" else "<#>"

    def order_by(self, query: str) -> str:
        """The ORDER BY expression the index serves, for a query vector written as ``query``."""
        if self.storage == "vector":
            return f"embedding {self.operator} {query}"
        return f"{self.key} {self.operator} ({query}::halfvec({self.dimension}))"

    def create_sql(
        self, name: str = INDEX_NAME, *, concurrently: bool = False, table: str = "medpg.chunks"
    ) -> str:
        """The CREATE INDEX statement (``table``: another table with an ``embedding`` column, for benchmarks)."""
        return (
            f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}{name} ON {table} "
            f"USING hnsw ({self.key} {self.opclass}) "
            f"WITH (m = {int(self.m)}, ef_construction = {int(self.ef_construction)})"
        )

    def graph_bytes(self, vectors: int) -> int:
        """About what pgvector's in-memory graph of ``vectors`` elements needs while it builds.

        Per element: the vector (4 or 2 bytes a dimension), its layer-0 neighbours (2m) and, on
        average, m more on upper layers, at about 8 bytes each with their distances, plus
        pgvector's per-element bookkeeping (~100 bytes); 20% slack.
        """
        per_element = (4 if self.storage == "vector" else 2) * self.dimension + 8 * 3 * self.m + 100
        return int(1.2 * vectors * per_element)


@dataclass(frozen=True)
class IndexBuild:
    """The outcome of a rebuild."""

    spec: IndexSpec
    vectors: int  # chunks with a vector when the build started
    seconds: float  # the CREATE INDEX alone
    size_bytes: int  # pg_relation_size of the new index
    maintenance_work_mem: str
    parallel_workers: int | None  # max_parallel_maintenance_workers set for the build (None: server's)
    concurrently: bool


def read_spec(conn: psycopg.Connection[Any]) -> IndexSpec:
    """The index ``medpg.embedding_space`` asks for."""
    row = conn.execute(
        "SELECT dimension, similarity, index_storage, hnsw_m, hnsw_ef_construction FROM medpg.embedding_space"
    ).fetchone()
    if row is None:
        raise SchemaError("medpg.embedding_space is empty: the schema is damaged; run `medpg db upgrade`")
    return IndexSpec(int(row[0]), str(row[1]), row[2], int(row[3]), int(row[4]))


def index_definition(conn: psycopg.Connection[Any], name: str = INDEX_NAME) -> str | None:
    """``pg_indexes.indexdef`` of the dense index (None when there is none)."""
    row = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'medpg' AND indexname = %s", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def index_size(conn: psycopg.Connection[Any], name: str = INDEX_NAME) -> int | None:
    row = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (f"medpg.{name}",)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def check_spec(spec: IndexSpec) -> None:
    """Refuse settings pgvector or revision 0010 would reject, with the setting named."""
    if spec.storage not in STORAGES:
        raise ConfigError(f"index storage must be one of {', '.join(STORAGES)}, got {spec.storage!r}")
    if not M_RANGE[0] <= spec.m <= M_RANGE[1]:
        raise ConfigError(f"HNSW m must be between {M_RANGE[0]} and {M_RANGE[1]}, got {spec.m}")
    lo, hi = EF_CONSTRUCTION_RANGE
    if not lo <= spec.ef_construction <= hi:
        raise ConfigError(f"HNSW ef_construction must be between {lo} and {hi}, got {spec.ef_construction}")
    if spec.ef_construction < 2 * spec.m:
        raise ConfigError(
            f"HNSW ef_construction ({spec.ef_construction}) must be at least 2 x m ({2 * spec.m})"
        )
    if spec.dimension > MAX_DIMENSIONS[spec.storage]:
        raise ConfigError(
            f"an HNSW index over {spec.storage} holds at most {MAX_DIMENSIONS[spec.storage]} dimensions; "
            f"the embedding space has {spec.dimension}"
            + ("; choose --storage halfvec" if spec.storage == "vector" and spec.dimension <= 4000 else "")
        )


def auto_memory(spec: IndexSpec, vectors: int) -> str:
    """A ``maintenance_work_mem`` that holds the graph of ``vectors`` elements (``AUTO_MEMORY_MB``)."""
    lo, hi = AUTO_MEMORY_MB
    mb = max(lo, min(hi, -(-spec.graph_bytes(vectors) // (1 << 20)) + 16))
    return f"{mb}MB"


def _vectors(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM medpg.chunks WHERE embedding IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def _set_build_settings(conn: psycopg.Connection[Any], memory: str, workers: int | None, local: bool) -> None:
    scope = "true" if local else "false"
    conn.execute(f"SELECT set_config('maintenance_work_mem', %s, {scope})", (memory,))
    if workers is not None:
        conn.execute(
            f"SELECT set_config('max_parallel_maintenance_workers', %s, {scope})", (str(int(workers)),)
        )


def _record(conn: psycopg.Connection[Any], spec: IndexSpec) -> None:
    conn.execute(
        "UPDATE medpg.embedding_space SET index_storage = %s, hnsw_m = %s, hnsw_ef_construction = %s",
        (spec.storage, spec.m, spec.ef_construction),
    )


def rebuild_dense_index(
    db: Database,
    *,
    storage: Storage | None = None,
    m: int | None = None,
    ef_construction: int | None = None,
    concurrently: bool = False,
    maintenance_work_mem: str | None = None,
    parallel_workers: int | None = None,
) -> IndexBuild:
    """(Re)build the dense index; the given settings replace the recorded ones, which it records.

    ``maintenance_work_mem`` (a PostgreSQL size, e.g. ``'2GB'``): default ``auto_memory``, the
    estimated graph size (pgvector slows down sharply once the graph outgrows it).
    ``parallel_workers``: ``max_parallel_maintenance_workers`` for the build (default: the
    server's); the server's ``max_parallel_workers`` and ``max_worker_processes`` still cap it.
    ``concurrently``: search keeps its old index until the new one is complete (see the module
    docstring); otherwise one transaction drops and builds, and searches wait for it.
    """
    with db.connect() as conn:
        current = read_spec(conn)
        spec = replace(
            current,
            storage=storage or current.storage,
            m=m if m is not None else current.m,
            ef_construction=ef_construction if ef_construction is not None else current.ef_construction,
        )
        check_spec(spec)
        vectors = _vectors(conn)
        conn.rollback()
        memory = maintenance_work_mem or auto_memory(spec, vectors)
        try:
            if concurrently:
                seconds = _build_concurrently(conn, spec, memory, parallel_workers)
            else:
                _set_build_settings(conn, memory, parallel_workers, local=True)
                conn.execute(f"DROP INDEX IF EXISTS medpg.{INDEX_NAME}")
                started = time.perf_counter()
                conn.execute(spec.create_sql())
                seconds = time.perf_counter() - started
                _record(conn, spec)
                conn.commit()
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseError(f"building the dense index failed (the old one is kept): {first}") from None
        size = index_size(conn) or 0
        conn.rollback()
    log.info(
        "dense index rebuilt: %s, m=%d, ef_construction=%d, %d vectors in %.1f s, %d MB",
        spec.storage,
        spec.m,
        spec.ef_construction,
        vectors,
        seconds,
        size >> 20,
    )
    return IndexBuild(spec, vectors, seconds, size, memory, parallel_workers, concurrently)


def _build_concurrently(
    conn: psycopg.Connection[Any], spec: IndexSpec, memory: str, workers: int | None
) -> float:
    conn.autocommit = True
    try:
        # An earlier concurrent build that failed leaves an invalid index behind.
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS medpg.{_NEW}")
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS medpg.{_OLD}")
        _set_build_settings(conn, memory, workers, local=False)
        started = time.perf_counter()
        try:
            conn.execute(spec.create_sql(_NEW, concurrently=True))
        except psycopg.Error:
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS medpg.{_NEW}")
            raise
        seconds = time.perf_counter() - started
        conn.autocommit = False
        # The settings and the index that serves them change together: a search sees the old
        # settings with the old index or the new ones with the new index.
        conn.execute("LOCK TABLE medpg.embedding_space IN EXCLUSIVE MODE")
        if index_definition(conn) is not None:
            conn.execute(f"ALTER INDEX medpg.{INDEX_NAME} RENAME TO {_OLD}")
        conn.execute(f"ALTER INDEX medpg.{_NEW} RENAME TO {INDEX_NAME}")
        _record(conn, spec)
        conn.commit()
        conn.autocommit = True
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS medpg.{_OLD}")
        return seconds
    finally:
        if not conn.closed:
            if conn.autocommit:
                conn.execute("RESET maintenance_work_mem")
                conn.execute("RESET max_parallel_maintenance_workers")
            else:
                conn.rollback()
            conn.autocommit = False


def drop_dense_index(db: Database, *, concurrently: bool = False) -> bool:
    """Drop the dense index (search then scans exactly); True when there was one.

    For a bulk load: updating the graph row by row is far slower than building it once after
    (``rebuild_dense_index``). The recorded settings stay, for that rebuild.
    """
    with db.connect() as conn:
        existed = index_definition(conn) is not None
        conn.rollback()
        if concurrently:
            conn.autocommit = True
            try:
                conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS medpg.{INDEX_NAME}")
            finally:
                conn.autocommit = False
        else:
            conn.execute(f"DROP INDEX IF EXISTS medpg.{INDEX_NAME}")
            conn.commit()
    return existed


__all__ = [
    "INDEX_NAME",
    "STORAGES",
    "IndexBuild",
    "IndexSpec",
    "Storage",
    "auto_memory",
    "check_spec",
    "drop_dense_index",
    "index_definition",
    "index_size",
    "read_spec",
    "rebuild_dense_index",
]
