"""Schema and migrations on the real embedded PostgreSQL + pgvector."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from medpg.config import Settings
from medpg.db import Database, check_schema, migrate, schema_state
from medpg.errors import DatabaseError, SchemaMismatchError

pytestmark = pytest.mark.integration


def _objects(db: Database) -> dict[str, str]:
    with db.connect() as conn:
        rows = conn.execute(
            """
            SELECT c.relname, c.relkind::text FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'medpg'
            """
        ).fetchall()
    return dict(rows)


def test_upgrade_downgrade_upgrade(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    db = Database(make_settings(database_url=create_database("migrations")))
    assert migrate.current_revision(db) is None
    migrate.upgrade(db)
    head = migrate.head_revision()
    assert migrate.current_revision(db) == head
    first = _objects(db)
    assert {
        "documents",
        "chunks",
        "embedding_space",
        "documents_tsv_idx",
        "chunks_embedding_hnsw_idx",
    } <= set(first)
    migrate.downgrade(db, "base")
    assert migrate.current_revision(db) is None
    assert _objects(db) == {}
    migrate.upgrade(db)
    assert migrate.current_revision(db) == head
    assert _objects(db) == first
    db.dispose()


def test_schema_matches_the_profile(db: Database) -> None:
    state = check_schema(db)
    assert (state.column_dimension, state.similarity) == (384, "cosine")  # MiniLM
    with db.connect() as conn:
        indexdef = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'chunks_embedding_hnsw_idx'"
        ).fetchone()[0]  # type: ignore[index]
        assert "hnsw" in indexdef and "vector_cosine_ops" in indexdef
        gin = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'documents_tsv_idx'"
        ).fetchone()[0]  # type: ignore[index]
        assert "gin" in gin
        # weighted tsvector: title A, body B
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
            "VALUES ('t', '1', 'Statins', 'reduce cholesterol', '\\x00')"
        )
        tsv = conn.execute("SELECT tsv::text FROM medpg.documents WHERE external_id = '1'").fetchone()[0]  # type: ignore[index]
        conn.rollback()
    assert "'statin':1A" in tsv and "'cholesterol':3B" in tsv


def test_medcpt_profile_gets_768_inner_product(
    migrated_db: Callable[..., Database],
) -> None:
    db = migrated_db("medcpt", model_profile="medcpt")
    state = check_schema(db)
    assert (state.column_dimension, state.similarity) == (768, "ip")
    with db.connect() as conn:
        indexdef = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'chunks_embedding_hnsw_idx'"
        ).fetchone()[0]  # type: ignore[index]
    assert "vector_ip_ops" in indexdef
    db.dispose()


def test_dimension_mismatch_is_a_clear_error(db: Database, make_settings: Callable[..., Settings]) -> None:
    other = Database(make_settings(database_url=db.settings.database_url, model_profile="medcpt"))
    with pytest.raises(SchemaMismatchError, match=r"768-dimensional.*vector\(384\)"):
        check_schema(other)
    # and the column refuses a wrong-sized vector outright: never truncated or padded
    with db.connect() as conn, pytest.raises(psycopg.errors.DataException, match="expected 384 dimensions"):
        conn.execute("SELECT '[1,2,3]'::vector::vector(384)")
    other.dispose()


def test_missing_schema_says_to_upgrade(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    db = Database(make_settings(database_url=create_database("empty")))
    with pytest.raises(DatabaseError, match="medpg db upgrade"):
        check_schema(db)
    assert schema_state(db).revision is None
    db.dispose()


def test_unreachable_server_is_a_clear_error(make_settings: Callable[..., Settings]) -> None:
    db = Database(make_settings(database_url="postgresql://medpg@127.0.0.1:1/medpg"))
    with pytest.raises(DatabaseError, match=r"cannot reach PostgreSQL at medpg@127\.0\.0\.1:1/medpg"):
        migrate.upgrade(db)


def test_server_without_pgvector_is_refused(make_settings: Callable[..., Settings]) -> None:
    """The machine's own PostgreSQL (no pgvector) when one answers on 5432; skipped otherwise."""
    url = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
                pytest.skip("the PostgreSQL on 127.0.0.1:5432 has pgvector")
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL without pgvector answers on 127.0.0.1:5432")
    db = Database(make_settings(database_url=url))
    with pytest.raises(DatabaseError, match="pgvector extension is not installed"):
        migrate.upgrade(db)
    db.dispose()


def test_lexical_blocks_migrate_with_data_both_ways(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    """0006 turns existing postings into blocks and its downgrade turns them back, same rows both ways."""
    db = Database(make_settings(database_url=create_database("blocks_migration")))
    migrate.upgrade(db, "0005")
    postings = (
        "SELECT lexeme, document_id, tf, dl, tf_title, dl_title FROM medpg.lexical_postings ORDER BY 1, 2"
    )
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
            "SELECT 's', 'd' || i, 'Title ' || i, 'statin therapy and cancer risk, case ' || i, '\\x00' "
            "FROM generate_series(1, 1500) i"
        )
        conn.commit()
        before = conn.execute(postings).fetchall()
        assert conn.execute("SELECT to_regclass('medpg.lexical_blocks')").fetchone() == (None,)
    migrate.upgrade(db)
    with db.connect() as conn:
        assert conn.execute(postings).fetchall() == before
        assert conn.execute("SELECT count(DISTINCT block_id) FROM medpg.lexical_documents").fetchone() == (2,)
    migrate.downgrade(db, "0005")
    with db.connect() as conn:
        assert conn.execute(postings).fetchall() == before
        kind = conn.execute(
            "SELECT relkind::text FROM pg_class WHERE oid = 'medpg.lexical_postings'::regclass"
        )
        assert kind.fetchone() == ("r",)
    db.dispose()
