"""A key bound to patient A gets nothing of patient B, or of another tenant, through any API route,
and a whole API session leaves no document or query text in the logs.

Patients A and B of tenant "mercy" and a patient A of tenant "other" each have documents that
share the word "tamponade" and a distinctive phrase of their own. The key under test is bound to
mercy's patient A with every DocumentReference scope (read, search, create, update, delete): every
route is called with what a curious client would try (B's ids, B in filters, FHIR parameters
naming B, writes to B's documents) and must return A's documents only, a 403/404, or nothing.
The route list is checked against the app's own routes, so a new route cannot skip this test.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from medpg import keys
from medpg.db import Database
from medpg.embedding.embedder import Embedder
from medpg.service.app import create_app

pytestmark = pytest.mark.integration

A_PHRASE = "quokka pericardial window"
B_PHRASE = "narwhal pericardial drain"
OTHER_PHRASE = "axolotl pericardial biopsy"
QUERY_PHRASE = "wombat tamponade question"


def _doc(i: str, patient: str, phrase: str) -> dict[str, Any]:
    return {
        "id": i,
        "title": f"Note {i}",
        "text": f"Cardiac tamponade after surgery; {phrase}.",
        "patient_id": patient,
    }


def _fhir(i: str, patient: str, phrase: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": i,
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "category": [{"coding": [{"code": "clinical-note"}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "date": "2024-05-01T10:00:00Z",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(f"Tamponade note: {phrase}".encode()).decode(),
                }
            }
        ],
    }


@pytest.fixture(scope="module")
def iso_db(migrated_db: Callable[..., Database], tiny_bert_dir: Path) -> Iterator[Database]:
    db = migrated_db(
        "api_isolation",
        model_profile="medcpt",
        query_model=str(tiny_bert_dir),
        article_model=str(tiny_bert_dir),
        cross_encoder_model="none",
        embedding_dim=32,
        chunk_tokens=64,
        chunk_overlap=8,
    )
    yield db
    db.dispose()


def _token(db: Database, tenant: str, patients: list[str] | None, *scopes: str) -> dict[str, str]:
    _, token = keys.create_key(db, name="iso", tenant=tenant, patients=patients, scopes=list(scopes))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def world(iso_db: Database) -> Iterator[dict[str, Any]]:
    with TestClient(create_app(iso_db.settings)) as client:
        mercy = _token(iso_db, "mercy", None, "system/DocumentReference.cruds", "medpg/admin")
        other = _token(iso_db, "other", None, "system/DocumentReference.cruds")
        for headers, docs in (
            (
                mercy,
                [
                    _doc("a1", "A", A_PHRASE),
                    _doc("a2", "A", A_PHRASE),
                    _doc("b1", "B", B_PHRASE),
                    _doc("b2", "B", B_PHRASE),
                ],
            ),
            (other, [_doc("a1", "A", OTHER_PHRASE), _doc("x1", "A", OTHER_PHRASE)]),
        ):
            r = client.post("/documents", json={"source": "notes", "documents": docs}, headers=headers)
            assert r.status_code == 200, r.text
        for headers, res in (
            (mercy, _fhir("fa", "A", A_PHRASE)),
            (mercy, _fhir("fb", "B", B_PHRASE)),
            (other, _fhir("fa", "A", OTHER_PHRASE)),
        ):
            r = client.post("/fhir/DocumentReference", json=res, headers=headers)
            assert r.status_code == 201, r.text
        Embedder(iso_db, iso_db.settings).embed_pending()
        key_a = _token(iso_db, "mercy", ["A"], "patient/DocumentReference.cruds")
        yield {"client": client, "key_a": key_a, "mercy": mercy, "other": other}


def _text_of(response: Any) -> str:
    return response.text


def _assert_nothing_of_b(response: Any) -> None:
    body = _text_of(response)
    assert B_PHRASE.split()[0] not in body and OTHER_PHRASE.split()[0] not in body, body[:500]
    assert '"B"' not in body and "Patient/B" not in body, body[:500]


# (method, path template) of every route and how the test calls it as patient A's key
def _calls() -> list[tuple[str, str, str, dict[str, Any]]]:
    search = {"query": "tamponade pericardial", "k": 20}
    return [
        ("POST", "/search", "/search", {"json": {**search, "mode": "lexical"}}),
        ("POST", "/search", "/search", {"json": {**search, "mode": "dense"}}),
        ("POST", "/search", "/search", {"json": {**search, "mode": "hybrid", "fusion": "rrf"}}),
        ("POST", "/search", "/search", {"json": {**search, "mode": "lexical", "lexical": "ts_rank"}}),
        ("POST", "/search", "/search", {"json": {**search, "filters": {"sources": ["notes", "fhir"]}}}),
        ("GET", "/documents/{source}/{external_id}", "/documents/notes/a1", {}),
        ("GET", "/documents/{source}/{external_id}", "/documents/notes/b1", {}),
        ("GET", "/documents/{source}/{external_id}", "/documents/notes/x1", {}),
        ("DELETE", "/documents/{source}/{external_id}", "/documents/notes/b2", {}),
        (
            "POST",
            "/documents",
            "/documents",
            {"json": {"source": "notes", "documents": [_doc("b1", "A", A_PHRASE)]}},
        ),
        (
            "POST",
            "/documents",
            "/documents",
            {"json": {"source": "notes", "documents": [_doc("b9", "B", A_PHRASE)]}},
        ),
        ("GET", "/status", "/status", {}),
        ("GET", "/fhir/DocumentReference/{resource_id}", "/fhir/DocumentReference/fa", {}),
        ("GET", "/fhir/DocumentReference/{resource_id}", "/fhir/DocumentReference/fb", {}),
        ("GET", "/fhir/DocumentReference", "/fhir/DocumentReference", {"params": {"_text": "tamponade"}}),
        ("GET", "/fhir/DocumentReference", "/fhir/DocumentReference", {"params": {"patient": "B"}}),
        (
            "GET",
            "/fhir/DocumentReference",
            "/fhir/DocumentReference",
            {"params": {"patient": "A,B", "category": "clinical-note", "_text": "tamponade"}},
        ),
        (
            "GET",
            "/fhir/DocumentReference",
            "/fhir/DocumentReference",
            {"params": {"patient": "A", "type": "11506-3"}},
        ),
        ("POST", "/fhir/DocumentReference", "/fhir/DocumentReference", {"json": _fhir("fb", "A", A_PHRASE)}),
        ("POST", "/fhir/DocumentReference", "/fhir/DocumentReference", {"json": _fhir("fz", "B", A_PHRASE)}),
        ("GET", "/admin/keys", "/admin/keys", {}),
        (
            "POST",
            "/admin/keys",
            "/admin/keys",
            {"json": {"name": "escalate", "scopes": ["system/DocumentReference.rs"]}},
        ),
        ("DELETE", "/admin/keys/{key_id}", "/admin/keys/1", {}),
        (
            "POST",
            "/feedback",
            "/feedback",
            {"json": {"query": "tamponade", "grade": 3, "document": {"source": "notes", "id": "b1"}}},
        ),
        (
            "POST",
            "/feedback",
            "/feedback",
            {"json": {"query": "tamponade", "grade": 2, "document": {"source": "notes", "id": "a1"}}},
        ),
        ("GET", "/health", "/health", {}),
        ("GET", "/metrics", "/metrics", {}),
    ]


def test_every_route_is_covered(world: dict[str, Any]) -> None:
    """Every operation of the app's OpenAPI schema is called below (a new route must be added here)."""
    paths = world["client"].get("/openapi.json").json()["paths"]
    operations = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert operations, "the schema lists no operations"
    assert operations <= {(m, p) for m, p, _, _ in _calls()}, sorted(
        operations - {(m, p) for m, p, _, _ in _calls()}
    )


def test_patient_a_key_gets_nothing_of_b_through_any_route(world: dict[str, Any], iso_db: Database) -> None:
    client, key_a = world["client"], world["key_a"]
    seen_a = False
    for method, _template, path, kwargs in _calls():
        response = client.request(method, path, headers=key_a, **kwargs)
        assert response.status_code < 500, (method, path, response.text)
        _assert_nothing_of_b(response)
        seen_a = seen_a or A_PHRASE.split()[0] in response.text or '"a1"' in response.text
        if path.startswith("/search") and response.status_code == 200:
            ids = {r["external_id"] for r in response.json()["results"]}
            assert ids and ids <= {"a1", "a2", "fa"}, (kwargs, ids)
        if path == "/fhir/DocumentReference" and method == "GET" and response.status_code == 200:
            bundle = response.json()
            assert bundle["type"] == "searchset"
            assert {e["resource"]["id"] for e in bundle.get("entry", [])} <= {"fa"}
    assert seen_a  # the key does reach its own patient's documents
    # nothing of B changed: B's documents are there with their own text, and no forged ones exist
    with iso_db.connect() as conn:
        rows = conn.execute(
            "SELECT tenant_id, source, external_id, patient_id, body FROM medpg.documents ORDER BY 1, 2, 3"
        ).fetchall()
        conn.rollback()
    by_id = {(t, s, e): (p, b) for t, s, e, p, b in rows}
    assert by_id[("mercy", "notes", "b1")][0] == "B" and B_PHRASE in by_id[("mercy", "notes", "b1")][1]
    assert ("mercy", "notes", "b2") in by_id
    assert ("mercy", "notes", "b9") not in by_id and ("mercy", "fhir", "fz") not in by_id
    assert by_id[("mercy", "fhir", "fb")][0] == "B"
    with iso_db.connect() as conn:  # feedback on B's document was refused, on A's recorded
        judged = conn.execute(
            "SELECT d.external_id FROM medpg.feedback f JOIN medpg.documents d ON d.id = f.document_id"
        ).fetchall()
        conn.rollback()
    assert judged == [("a1",)]


def test_other_tenant_sees_only_its_own_documents_with_the_same_ids(world: dict[str, Any]) -> None:
    client, other = world["client"], world["other"]
    r = client.get("/documents/notes/a1", headers=other)
    assert r.status_code == 200 and OTHER_PHRASE in r.json()["text"]
    r = client.post("/search", json={"query": "pericardial", "k": 20, "mode": "lexical"}, headers=other)
    assert {x["external_id"] for x in r.json()["results"]} == {"a1", "x1", "fa"}
    assert A_PHRASE.split()[0] not in r.text and B_PHRASE.split()[0] not in r.text


def test_a_whole_api_session_logs_no_document_or_query_text(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    client, mercy = world["client"], world["mercy"]
    caplog.set_level(logging.DEBUG)
    secret_doc = "zygomorphic thrombectomy"
    calls = [
        ("POST", "/documents", {"json": {"source": "notes", "documents": [_doc("s1", "A", secret_doc)]}}),
        (
            "POST",
            "/documents",
            {
                "json": {
                    "source": "notes",
                    "documents": [{"id": "bad", "text": secret_doc, "date": "not a date"}],
                }
            },
        ),
        ("POST", "/search", {"json": {"query": QUERY_PHRASE, "k": 5}}),
        ("POST", "/search", {"json": {"query": QUERY_PHRASE, "k": 0}}),
        ("POST", "/search", {"json": {"query": QUERY_PHRASE, "filters": {"patient_ids": [secret_doc]}}}),
        ("GET", "/documents/notes/s1", {}),
        ("GET", f"/fhir/DocumentReference?_text={QUERY_PHRASE}&patient=A", {}),
        ("GET", f"/fhir/DocumentReference?_text={QUERY_PHRASE}&bogus={secret_doc}", {}),
        ("POST", "/fhir/DocumentReference", {"json": {**_fhir("s2", "A", secret_doc), "status": secret_doc}}),
        (
            "POST",
            "/fhir/DocumentReference",
            {"content": orjson.dumps({"resourceType": "DocumentReference", "id": secret_doc}) + b"{"},
        ),
        ("DELETE", "/documents/notes/s1", {}),
    ]
    for method, path, kwargs in calls:
        response = client.request(method, path, headers=mercy, **kwargs)
        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:  # error bodies do not echo what was sent either
            assert secret_doc not in response.text and QUERY_PHRASE not in response.text, response.text
    # every logger but the test client's own (httpx logs the URLs this test sends)
    logged = "\n".join(
        r.getMessage() + " " + str(r.args) for r in caplog.records if not r.name.startswith("httpx")
    )
    out, err = capfd.readouterr()  # the service's own stream handlers, if any
    for text in (logged, out, err):
        assert secret_doc not in text and QUERY_PHRASE not in text
        for word in (secret_doc.split()[0], QUERY_PHRASE.split()[0]):
            assert word not in text
    assert any("/search" in r.getMessage() for r in caplog.records)  # the access log did log the requests
