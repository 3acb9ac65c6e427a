"""Schema and migrations on the real embedded PostgreSQL + pgvector."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from medpg import schema
from medpg.config import Settings
from medpg.db import Database, migrate, schema_state
from medpg.errors import ConfigError, DatabaseError, SchemaError, SchemaMismatchError

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


def _definitions(db: Database) -> dict[str, str]:
    """Every function, view, trigger, table column, constraint and index medpg defines, as SQL text."""
    queries = {
        "function": "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
        "WHERE p.pronamespace = 'medpg'::regnamespace",
        "view": "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c "
        "WHERE c.relnamespace = 'medpg'::regnamespace AND c.relkind = 'v'",
        "trigger": "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = 'medpg'::regnamespace AND NOT t.tgisinternal",
        "column": "SELECT c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod) || ' ' || "
        "a.attnotnull::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || a.attstorage::text "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE c.relnamespace = 'medpg'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped",
        "constraint": "SELECT conrelid::regclass || '.' || conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'medpg'::regnamespace",
        "index": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'medpg'",
    }
    out: dict[str, str] = {}
    with db.connect() as conn:
        for kind, sql in queries.items():
            for name, definition in conn.execute(sql).fetchall():
                out[f"{kind} {name}"] = definition
    return out


def test_upgrade_downgrade_upgrade_gives_the_same_schema(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    db = Database(make_settings(database_url=create_database("migrations")))
    assert migrate.current_revision(db) is None
    schema.upgrade(db)
    head = migrate.head_revision()
    assert migrate.current_revision(db) == head
    first_objects, first = _objects(db), _definitions(db)
    assert {
        "documents",
        "chunks",
        "embedding_space",
        "documents_tsv_idx",
        "chunks_embedding_hnsw_idx",
    } <= set(first_objects)
    assert {"function medpg.hybrid_search", "function medpg.chunk_state", "view lexical_postings"} <= {
        k.split("(")[0] for k in first
    }
    migrate.downgrade(db, "base")
    assert migrate.current_revision(db) is None
    assert _objects(db) == {}
    schema.upgrade(db)
    assert migrate.current_revision(db) == head
    assert _objects(db) == first_objects
    assert _definitions(db) == first
    # Upgrading a database already at head re-applies the definitions and changes nothing.
    schema.upgrade(db)
    assert _definitions(db) == first
    db.dispose()


def test_every_definition_has_its_sql_file(db: Database) -> None:
    """Each function and view in the medpg schema is created by a file in migrations/sql/idempotent."""
    with migrate.migrations_dir() as root:
        text = "\n".join(p.read_text() for p in migrate.idempotent_files(root))
    with db.connect() as conn:
        functions = {
            r[0]
            for r in conn.execute(
                "SELECT proname FROM pg_proc WHERE pronamespace = 'medpg'::regnamespace"
            ).fetchall()
        }
        views = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'medpg'::regnamespace AND relkind = 'v'"
            ).fetchall()
        }
    assert functions and views
    for name in functions:
        assert f"CREATE OR REPLACE FUNCTION medpg.{name}(" in text, name
    for name in views:
        # every view runs with the caller's privileges, or it would read past row-level security
        assert f"CREATE OR REPLACE VIEW medpg.{name} WITH (security_invoker = true) AS" in text, name


def test_definitions_do_not_depend_on_the_configured_model(
    db: Database, migrated_db: Callable[..., Database]
) -> None:
    """The same SQL for a cosine (MiniLM) and an inner-product (MedCPT) database: the similarity is
    read from medpg.embedding_space at query time, never templated in at upgrade time."""
    ip = migrated_db("ip_defs", model_profile="medcpt")
    functions = {k: v for k, v in _definitions(db).items() if k.startswith(("function", "view", "trigger"))}
    ip_functions = {
        k: v for k, v in _definitions(ip).items() if k.startswith(("function", "view", "trigger"))
    }
    assert functions == ip_functions
    ip.dispose()


def _copy_migrations(tmp_path: Path) -> Path:
    with migrate.migrations_dir() as root:
        shutil.copytree(root, tmp_path / "migrations")
    return tmp_path / "migrations"


def test_frozen_revisions_are_checked(tmp_path: Path) -> None:
    root = _copy_migrations(tmp_path)
    migrate.verify_frozen(root)  # the shipped files match their hashes
    released = sorted(p.name for p in (root / "versions").glob("*.py"))
    listed = (root / "frozen.txt").read_text()
    assert all(f"versions/{name}" in listed for name in released)  # every revision is frozen
    edited = root / "versions" / "0004_lexical_stats.py"
    edited.write_text(edited.read_text().replace("smallint", "integer"))
    with pytest.raises(SchemaError, match=r"versions/0004_lexical_stats\.py differ"):
        migrate.verify_frozen(root)


def test_upgrade_refuses_an_edited_release(
    tmp_path: Path,
    create_database: Callable[[str], str],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = _copy_migrations(tmp_path)
    (root / "versions" / "0001_extension.py").write_text("# edited\n", encoding="utf-8")

    @contextmanager
    def edited() -> Iterator[Path]:
        yield root

    monkeypatch.setattr(migrate, "migrations_dir", edited)
    db = Database(make_settings(database_url=create_database("edited_release")))
    with pytest.raises(SchemaError, match="must not change"):
        schema.upgrade(db)
    assert migrate.current_revision(db) is None
    db.dispose()


def test_no_revision_imports_another() -> None:
    with migrate.migrations_dir() as root:
        for path in (root / "versions").glob("*.py"):
            text = path.read_text()
            assert "importlib" not in text and "spec_from_file_location" not in text, path.name
            assert not re.search(r"^\s*(from|import) .*(versions|_\d{4})", text, re.M), path.name


def test_revision_0002_needs_the_vector_space(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    db = Database(make_settings(database_url=create_database("no_space")))
    with pytest.raises(ConfigError, match="vector dimension and similarity"):
        migrate.upgrade(db)
    assert migrate.current_revision(db) is None
    db.dispose()


def test_schema_matches_the_profile(db: Database) -> None:
    state = schema.check(db)
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
    state = schema.check(db)
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
        schema.check(other)
    # and the column refuses a wrong-sized vector outright: never truncated or padded
    with db.connect() as conn, pytest.raises(psycopg.errors.DataException, match="expected 384 dimensions"):
        conn.execute("SELECT '[1,2,3]'::vector::vector(384)")
    other.dispose()


def test_missing_schema_says_to_upgrade(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    db = Database(make_settings(database_url=create_database("empty")))
    with pytest.raises(DatabaseError, match="medpg db upgrade"):
        schema.check(db)
    assert schema_state(db).revision is None
    db.dispose()


def test_unreachable_server_is_a_clear_error(make_settings: Callable[..., Settings]) -> None:
    db = Database(make_settings(database_url="postgresql://medpg@127.0.0.1:1/medpg"))
    with pytest.raises(DatabaseError, match=r"cannot reach PostgreSQL at medpg@127\.0\.0\.1:1/medpg"):
        schema.upgrade(db)


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
        schema.upgrade(db)
    db.dispose()


def test_lexical_blocks_migrate_with_data_both_ways(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    """0006's downgrade turns blocks into one row per posting and its upgrade regroups them: same rows."""
    db = Database(make_settings(database_url=create_database("blocks_migration")))
    schema.upgrade(db)
    postings = (
        "SELECT lexeme, document_id, tf, dl, tf_title, dl_title FROM medpg.lexical_postings ORDER BY 1, 2"
    )
    stats = "SELECT * FROM medpg.lexical_corpus"
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
            "SELECT 's', 'd' || i, 'Title ' || i, 'statin therapy and cancer risk, case ' || i, '\\x00' "
            "FROM generate_series(1, 1500) i"
        )
        conn.commit()
        before, before_stats = conn.execute(postings).fetchall(), conn.execute(stats).fetchall()
    assert len(before) > 1500
    migrate.downgrade(db, "0005")
    with db.connect() as conn:
        kind = conn.execute(
            "SELECT relkind::text FROM pg_class WHERE oid = 'medpg.lexical_postings'::regclass"
        )
        assert kind.fetchone() == ("r",)
        assert conn.execute(postings).fetchall() == before
        assert conn.execute("SELECT to_regclass('medpg.lexical_blocks')").fetchone() == (None,)
        assert conn.execute("SELECT to_regproc('medpg.hybrid_search')").fetchone() == (None,)
    schema.upgrade(db)
    with db.connect() as conn:
        assert conn.execute(postings).fetchall() == before
        assert conn.execute(stats).fetchall() == before_stats
        assert conn.execute("SELECT count(DISTINCT block_id) FROM medpg.lexical_documents").fetchone() == (2,)
    db.dispose()


def test_upgrade_indexes_documents_the_lexical_index_missed(
    create_database: Callable[[str], str], make_settings: Callable[..., Settings]
) -> None:
    """Documents written while the triggers were absent (below head) are indexed by the next upgrade."""
    db = Database(make_settings(database_url=create_database("backfill")))
    schema.upgrade(db)
    migrate.downgrade(db, "0003")
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO medpg.documents (source, external_id, title, body, content_hash) "
            "VALUES ('s', '1', 'Statins', 'lower cholesterol', '\\x00'), ('s', '2', '', 'the of and', '\\x00')"
        )
        conn.commit()
    schema.upgrade(db)
    with db.connect() as conn:
        corpus = conn.execute("SELECT documents, total_length FROM medpg.lexical_corpus").fetchone()
        found = conn.execute("SELECT document_id FROM medpg.bm25_search('cholesterol')").fetchall()
    assert corpus == (2, 3) and len(found) == 1
    db.dispose()


def test_revisions_without_alembic_agree_with_alembic(db: Database) -> None:
    """medpg.db.revisions reads the head and the current revision without importing Alembic."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from medpg.db import revisions

    with revisions.migrations_dir() as root:
        assert revisions.head_revision() == ScriptDirectory(str(root)).get_current_head()
    with db.begin() as conn:
        alembic_current = MigrationContext.configure(
            conn, opts={"version_table": revisions.VERSION_TABLE}
        ).get_current_revision()
    assert revisions.current_revision(db) == alembic_current == revisions.head_revision()
