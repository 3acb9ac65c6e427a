"""Row-level security, tested in raw SQL: a scoped role sees nothing of another tenant or patient.

Two tenants; tenant 'north' has patients p1 and p2 and a document without a patient, tenant
'south' has a patient also called p1. Every document mentions "zebrafish". The scoped roles are a
SQL application's login role (medpg_app, scoped by medpg.sql_roles) and the API's role
(medpg_api, scoped by transaction settings through medpg.access.Scope); each connects and runs
plain SELECTs, counts, the postings views and the search functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from medpg.access import Scope, create_sql_role
from medpg.db import Database
from medpg.ingest.validation import Record
from medpg.ingest.writer import BatchFailed, DocumentWriter

pytestmark = pytest.mark.integration

DOCS: dict[tuple[str, str | None], list[str]] = {
    ("north", "p1"): ["zebrafish liver regeneration", "zebrafish heart repair", "zebrafish fin study"],
    ("north", "p2"): ["zebrafish kidney injury", "zebrafish retina dystrophy"],
    ("north", None): ["zebrafish genome atlas"],
    ("south", "p1"): ["zebrafish anemia model", "zebrafish spinal cord"],
}
DIM = 384


def _records(tenant: str, patient: str | None, texts: list[str]) -> list[Record]:
    return [
        Record(i, f"{tenant}-{patient}-{i}", "", text, {"ward": tenant}, patient, None)
        for i, text in enumerate(texts)
    ]


@pytest.fixture(scope="module")
def rls_db(db: Database) -> Iterator[Database]:
    for (tenant, patient), texts in DOCS.items():
        DocumentWriter(db, db.settings, "notes", tenant=tenant).write(_records(tenant, patient, texts))
    # Vectors without an encoder: a random unit vector per chunk, as the current model.
    rng = np.random.default_rng(7)
    with db.connect() as conn:
        conn.execute("UPDATE medpg.embedding_space SET model = 'test-model'")
        ids = [r[0] for r in conn.execute("SELECT id FROM medpg.chunks ORDER BY id").fetchall()]
        for chunk_id in ids:
            v = rng.standard_normal(DIM)
            conn.execute(
                "UPDATE medpg.chunks SET embedding = %s, embedding_model = 'test-model', "
                "embedded_hash = content_hash, embedded_at = now() WHERE id = %s",
                (v / np.linalg.norm(v), chunk_id),
            )
        conn.commit()
    create_sql_role(db, "north_p1_app", Scope("north", ("p1",)))
    create_sql_role(db, "north_app", Scope("north"))
    create_sql_role(db, "south_app", Scope("south"))
    yield db


def _url_as(db: Database, role: str) -> str:
    url = db.url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")
    return re.sub(r"//[^@/]*@", f"//{role}@", url, count=1)


def _connect(db: Database, role: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(_url_as(db, role))
    from pgvector.psycopg import register_vector

    register_vector(conn)
    return conn


def _ids(db: Database, tenant: str, patient: str | None) -> set[int]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT id FROM medpg.documents WHERE tenant_id = %s AND patient_id IS NOT DISTINCT FROM %s",
            (tenant, patient),
        ).fetchall()
        conn.rollback()
    return {r[0] for r in rows}


def _visible(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything a role can learn about documents through plain SQL and the search functions."""
    q = np.ones(DIM) / np.sqrt(DIM)

    def ids(sql: str, *args: object) -> set[int]:
        return {r[0] for r in conn.execute(sql, args).fetchall()}

    def scalar(sql: str) -> Any:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]

    return {
        "documents": ids("SELECT id FROM medpg.documents"),
        "count": scalar("SELECT count(*) FROM medpg.documents"),
        "chunk_docs": ids("SELECT document_id FROM medpg.chunks"),
        "chunk_count": scalar("SELECT count(*) FROM medpg.chunks"),
        "chunk_states": ids("SELECT document_id FROM medpg.chunk_states"),
        "postings": ids("SELECT document_id FROM medpg.lexical_postings WHERE lexeme = 'zebrafish'"),
        "all_postings": ids("SELECT document_id FROM medpg.lexical_postings"),
        "block_docs": ids("SELECT unnest(document_ids) FROM medpg.lexical_blocks"),
        "lengths": ids("SELECT document_id FROM medpg.lexical_documents"),
        "df": scalar(
            "SELECT coalesce(sum(document_frequency), 0) FROM medpg.lexical_document_frequencies "
            "WHERE lexeme = 'zebrafish'"
        ),
        "corpus": scalar("SELECT documents FROM medpg.lexical_corpus"),
        "bm25": ids("SELECT document_id FROM medpg.bm25_search('zebrafish', 100)"),
        "bm25_scores": dict(
            conn.execute("SELECT document_id, score FROM medpg.bm25_scores('zebrafish')").fetchall()
        ),
        "ts_rank": ids("SELECT document_id FROM medpg.ts_rank_search('zebrafish', 100)"),
        "dense": ids("SELECT document_id FROM medpg.dense_search(%s::vector, 100)", q),
        "hybrid": ids("SELECT document_id FROM medpg.hybrid_search('zebrafish', %s::vector, 100)", q),
        "hybrid_lexical": ids(
            "SELECT document_id FROM medpg.hybrid_search('zebrafish', NULL, 100, 'lexical')"
        ),
    }


def _assert_sees_exactly(seen: dict[str, Any], expected: set[int]) -> None:
    for name in (
        "documents",
        "chunk_docs",
        "chunk_states",
        "postings",
        "all_postings",
        "block_docs",
        "lengths",
        "bm25",
        "ts_rank",
        "dense",
        "hybrid",
        "hybrid_lexical",
    ):
        assert seen[name] == expected, name
    assert set(seen["bm25_scores"]) == expected
    assert seen["count"] == len(expected)
    assert seen["df"] == len(expected)
    assert seen["corpus"] == len(expected)


def test_patient_bound_sql_role_sees_only_its_patient(rls_db: Database) -> None:
    with _connect(rls_db, "north_p1_app") as conn:
        seen = _visible(conn)
    _assert_sees_exactly(seen, _ids(rls_db, "north", "p1"))


def test_tenant_sql_role_sees_its_tenant_only(rls_db: Database) -> None:
    north = _ids(rls_db, "north", "p1") | _ids(rls_db, "north", "p2") | _ids(rls_db, "north", None)
    with _connect(rls_db, "north_app") as conn:
        seen = _visible(conn)
    _assert_sees_exactly(seen, north)
    with _connect(rls_db, "south_app") as conn:
        seen = _visible(conn)
    # the same patient id in another tenant is another patient
    _assert_sees_exactly(seen, _ids(rls_db, "south", "p1"))


def test_api_role_scope_comes_from_the_transaction(rls_db: Database) -> None:
    with rls_db.connect() as conn:
        Scope("north", ("p2",)).apply(conn)
        seen = _visible(conn)
        conn.rollback()
        # the scope ends with the transaction: the owner sees everything again
        total = conn.execute("SELECT count(*) FROM medpg.documents").fetchone()
        conn.rollback()
    _assert_sees_exactly(seen, _ids(rls_db, "north", "p2"))
    assert total is not None and total[0] == sum(len(t) for t in DOCS.values())


def test_a_scope_with_unknown_tenant_or_no_patients_sees_nothing(rls_db: Database) -> None:
    with rls_db.connect() as conn:
        Scope("west").apply(conn)
        seen = _visible(conn)
        conn.rollback()
    _assert_sees_exactly(seen, set())


def test_bm25_scores_of_a_tenant_ignore_other_tenants(rls_db: Database) -> None:
    """Adding documents to one tenant changes no score of another (statistics are per tenant)."""
    with _connect(rls_db, "south_app") as conn:
        before = _visible(conn)["bm25_scores"]
    extra = [f"zebrafish zebrafish note {i}" for i in range(30)]
    DocumentWriter(rls_db, rls_db.settings, "extra", tenant="north").write(_records("north", "p9", extra))
    try:
        with _connect(rls_db, "south_app") as conn:
            after = _visible(conn)["bm25_scores"]
        with rls_db.connect() as conn:  # the owner's corpus did change
            owner = dict(
                conn.execute("SELECT document_id, score FROM medpg.bm25_scores('zebrafish')").fetchall()
            )
            conn.rollback()
        assert after == before
        assert any(owner[d] != s for d, s in before.items())
    finally:
        with rls_db.connect() as conn:
            conn.execute("DELETE FROM medpg.documents WHERE source = 'extra'")
            conn.commit()


def test_scoped_sql_role_cannot_write_escape_or_read_service_tables(rls_db: Database) -> None:
    with _connect(rls_db, "north_p1_app") as conn:
        conn.autocommit = True
        for statement in (
            "INSERT INTO medpg.documents (source, external_id, body, content_hash) VALUES ('x', 'y', 'z', 'h')",
            "UPDATE medpg.documents SET title = 'changed'",
            "DELETE FROM medpg.documents",
            "UPDATE medpg.lexical_stats SET documents = 0",
            "INSERT INTO medpg.lexical_stats (tenant_id, slot) VALUES ('north', 99)",
            "SELECT * FROM medpg.api_keys",
            "SELECT * FROM medpg.audit_log",
            "SELECT * FROM medpg.service_secrets",
            "SELECT * FROM medpg.chunking_queue",
            "SET ROLE medpg_api",
            "INSERT INTO medpg.sql_roles VALUES ('north_p1_app', 'south', NULL)",
            "UPDATE medpg.sql_roles SET patient_ids = NULL",
            "ALTER TABLE medpg.documents DISABLE ROW LEVEL SECURITY",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # settings meant for the API role change nothing for a SQL application's role
        conn.execute("SET medpg.tenant = 'south'")
        conn.execute("SET medpg.patients = '*'")
        seen = _visible(conn)
        roles = conn.execute("SELECT role_name FROM medpg.sql_roles").fetchall()
    _assert_sees_exactly(seen, _ids(rls_db, "north", "p1"))
    assert roles == [("north_p1_app",)]


def test_planner_statistics_do_not_show_values(rls_db: Database) -> None:
    """pg_stats hides columns of tables under row-level security from the scoped role."""
    with rls_db.connect() as conn:
        conn.execute("ANALYZE medpg.documents")
        conn.commit()
    with _connect(rls_db, "north_p1_app") as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_stats WHERE schemaname = 'medpg' AND tablename = 'documents'"
        ).fetchall()
    assert rows == []


def test_api_scope_writes_only_its_patients(rls_db: Database) -> None:
    scope = Scope("north", ("p1",))
    writer = DocumentWriter(rls_db, rls_db.settings, "notes", scope=scope)
    result = writer.write([Record(0, "north-p1-new", "", "zebrafish new note", {}, "p1", None)])
    assert result.inserted == 1
    with pytest.raises(BatchFailed) as refused:
        writer.write([Record(0, "north-p2-forged", "", "zebrafish forged", {}, "p2", None)])
    assert isinstance(refused.value.cause, psycopg.errors.InsufficientPrivilege)
    assert "row-level security" in str(refused.value.cause)
    # an id taken by another patient's document cannot be overwritten through the upsert
    with pytest.raises(BatchFailed) as refused:
        writer.write([Record(0, "north-p2-0", "", "zebrafish overwrite", {}, "p1", None)])
    assert isinstance(refused.value.cause, psycopg.errors.InsufficientPrivilege)
    with rls_db.connect() as conn:
        rows = conn.execute(
            "SELECT external_id, patient_id, body FROM medpg.documents WHERE external_id LIKE 'north-p%%' "
            "AND (external_id LIKE '%%new' OR external_id LIKE '%%forged' OR external_id = 'north-p2-0')"
            " ORDER BY 1"
        ).fetchall()
        conn.execute("DELETE FROM medpg.documents WHERE external_id = 'north-p1-new'")
        conn.commit()
    assert rows == [
        ("north-p1-new", "p1", "zebrafish new note"),
        ("north-p2-0", "p2", "zebrafish kidney injury"),
    ]


def test_moving_a_document_to_another_patient_moves_its_postings(rls_db: Database, tmp_path: Path) -> None:
    with rls_db.connect() as conn:
        conn.execute("UPDATE medpg.documents SET patient_id = 'p2' WHERE external_id = 'north-p1-2'")
        conn.commit()
    try:
        with _connect(rls_db, "north_p1_app") as conn:
            seen = _visible(conn)
        _assert_sees_exactly(seen, _ids(rls_db, "north", "p1"))
        assert len(seen["documents"]) == 2
    finally:
        with rls_db.connect() as conn:
            conn.execute("UPDATE medpg.documents SET patient_id = 'p1' WHERE external_id = 'north-p1-2'")
            conn.commit()
