"""API keys (hashed, scoped, revocable) and the audit log (same transaction, hashed queries)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest

from medpg import audit, keys
from medpg.access import Scope
from medpg.db import Database
from medpg.documents import get_document
from medpg.errors import AuthenticationError, InputError, NotFoundError, PermissionDeniedError
from medpg.ingest.validation import Record
from medpg.ingest.writer import DocumentWriter
from medpg.retrieval import search

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kdb(db: Database) -> Iterator[Database]:
    recs = [
        Record(0, "a1", "", "pericardial effusion on echo", {}, "pa", None),
        Record(1, "a2", "", "pericardial rub heard", {}, "pa", None),
        Record(2, "b1", "", "pericardial tamponade drained", {}, "pb", None),
    ]
    DocumentWriter(db, db.settings, "notes", tenant="clinic").write(recs)
    yield db


def test_a_key_is_stored_as_a_hash_and_authenticates(kdb: Database) -> None:
    key, token = keys.create_key(
        kdb, name="ehr", tenant="clinic", patients=["pa"], scopes=["patient/DocumentReference.rs"]
    )
    with kdb.connect() as conn:
        stored = conn.execute(
            "SELECT secret_hash, prefix FROM medpg.api_keys WHERE id = %s", (key.id,)
        ).fetchone()
        conn.rollback()
    assert stored is not None
    assert bytes(stored[0]) == hashlib.sha256(token.encode()).digest()
    assert token.startswith(f"medpg_{stored[1]}_") and token.split("_", 2)[2] not in str(stored)
    found = keys.authenticate(kdb, token)
    assert found.id == key.id and found.scope == Scope("clinic", ("pa",))
    assert found.allows("read") and found.allows("search")
    assert not found.allows("write") and not found.allows("delete") and not found.allows("admin")


@pytest.mark.parametrize(
    "token, message",
    [
        (None, "required"),
        ("", "required"),
        ("Bearer x", "not a medpg key"),
        ("medpg_000000000000_" + "x" * 43, "unknown"),
    ],
)
def test_missing_or_unknown_keys_are_refused(kdb: Database, token: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError, match=message):
        keys.authenticate(kdb, token)


def test_a_forged_secret_with_a_real_prefix_is_refused(kdb: Database) -> None:
    _, token = keys.create_key(
        kdb, name="x", tenant="clinic", patients=None, scopes=["system/DocumentReference.rs"]
    )
    prefix = token.rsplit("_", 1)[0]
    with pytest.raises(AuthenticationError, match="unknown"):
        keys.authenticate(kdb, prefix + "_" + "A" * 43)


def test_revoked_keys_are_refused_and_stay_listed(kdb: Database) -> None:
    key, token = keys.create_key(
        kdb, name="old", tenant="clinic", patients=None, scopes=["user/DocumentReference.read"]
    )
    keys.revoke_key(kdb, key.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        keys.authenticate(kdb, token)
    assert key.id not in {k.id for k in keys.list_keys(kdb, tenant="clinic")}
    assert key.id in {k.id for k in keys.list_keys(kdb, tenant="clinic", include_revoked=True)}
    with pytest.raises(NotFoundError):
        keys.revoke_key(kdb, key.id, tenant="elsewhere")


@pytest.mark.parametrize(
    "scopes, patients, message",
    [
        (["system/DocumentReference.rs"], ["pa"], "patient/ scopes only"),
        (["patient/DocumentReference.rs"], None, "need the key bound to patients"),
        (["patient/Observation.rs"], ["pa"], "not a SMART scope"),
        (["system/DocumentReference.xyz"], None, "not a SMART scope"),
        (["system/DocumentReference."], None, "not a SMART scope"),
        ([], None, "at least one scope"),
        (["medpg/admin"], ["pa"], "cannot administer"),
    ],
)
def test_bad_scopes_are_refused(
    kdb: Database, scopes: list[str], patients: list[str] | None, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        keys.create_key(kdb, name="k", tenant="clinic", patients=patients, scopes=scopes)


def test_smart_v1_and_v2_scopes_grant_the_same_permissions(kdb: Database) -> None:
    for v1, v2 in (("read", "rs"), ("write", "cud"), ("*", "cruds")):
        a, _ = keys.create_key(
            kdb, name="a", tenant="clinic", patients=None, scopes=[f"system/DocumentReference.{v1}"]
        )
        b, _ = keys.create_key(kdb, name="b", tenant="clinic", patients=None, scopes=[f"system/*.{v2}"])
        for p in ("read", "search", "write", "delete"):
            assert a.allows(p) == b.allows(p), (v1, p)
    admin, _ = keys.create_key(kdb, name="adm", tenant="clinic", patients=None, scopes=["medpg/admin"])
    keys.require(admin, "admin")
    with pytest.raises(PermissionDeniedError):
        keys.require(admin, "search")


def _audit_rows(db: Database) -> list[tuple[object, ...]]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT route, tenant_id, key_id, query_hash, document_ids, patient_ids, db_role "
            "FROM medpg.audit_log ORDER BY id"
        ).fetchall()
        conn.rollback()
    return rows


def test_a_scoped_search_writes_one_audit_row_without_the_query(kdb: Database) -> None:
    key, _ = keys.create_key(
        kdb, name="s", tenant="clinic", patients=["pa"], scopes=["patient/DocumentReference.s"]
    )
    before = len(_audit_rows(kdb))
    ctx = audit.AuditContext(key.id, "clinic", "POST /search", audit.hash_key(kdb))
    response = search(
        "pericardial", k=10, mode="lexical", db=kdb, settings=kdb.settings, scope=key.scope, audit=ctx
    )
    ids = {r.external_id for r in response.results}
    assert ids == {"a1", "a2"}  # patient pb's note is invisible
    rows = _audit_rows(kdb)
    assert len(rows) == before + 1
    route, tenant, key_id, qhash, doc_ids, patients, role = rows[-1]
    assert (route, tenant, key_id, role) == ("POST /search", "clinic", key.id, "medpg_api")
    assert patients == ["pa"] and len(doc_ids) == 2
    assert bytes(qhash) == audit.query_hash(audit.hash_key(kdb), "pericardial")
    assert b"pericardial" not in bytes(qhash)
    listed = audit.list_entries(kdb, tenant="clinic", patient_id="pa", limit=1)
    assert listed and listed[0].route == "POST /search"
    assert "pericardial" not in audit.to_text(listed, "jsonl") + audit.to_text(listed, "csv")


def test_the_audit_row_commits_with_the_read_or_not_at_all(kdb: Database) -> None:
    """An audit row that cannot be written stops the read: the tenant check refuses a forged tenant."""
    before = len(_audit_rows(kdb))
    ctx = audit.AuditContext(None, "other-tenant", "GET /documents", audit.hash_key(kdb))
    with pytest.raises(Exception, match="row-level security"):
        get_document(kdb, source="notes", external_id="a1", scope=Scope("clinic"), audit=ctx)
    assert len(_audit_rows(kdb)) == before
    doc = get_document(
        kdb,
        source="notes",
        external_id="a1",
        scope=Scope("clinic"),
        audit=audit.AuditContext(None, "clinic", "GET /documents", audit.hash_key(kdb)),
    )
    assert doc.patient_id == "pa"
    assert _audit_rows(kdb)[-1][4:6] == ([doc.id], ["pa"])


def test_a_patient_bound_scope_cannot_read_another_patients_document(kdb: Database) -> None:
    with pytest.raises(NotFoundError):
        get_document(kdb, source="notes", external_id="b1", scope=Scope("clinic", ("pa",)))
    with pytest.raises(NotFoundError):
        get_document(kdb, source="notes", external_id="a1", scope=Scope("elsewhere"))


def test_query_hash_is_keyed_and_normalised() -> None:
    a = audit.query_hash(b"k1", " chest pain ")
    assert a == audit.query_hash(b"k1", "chest pain")
    assert a != audit.query_hash(b"k2", "chest pain")
    assert a != hashlib.sha256(b"chest pain").digest()
    assert np.frombuffer(a, dtype=np.uint8).size == 32
