"""The HTTP API against the embedded PostgreSQL: keys and scopes, documents, search, status,
health, metrics, limits and error bodies, the access log, and `medpg search` through a running
service. Models are the tiny random BERTs (``tests.fixtures.tiny_models``), so dense and hybrid
search run for real; Redis (when a test needs a broker) is the real one at 127.0.0.1:6379.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from medpg import keys
from medpg.config import Settings
from medpg.db import Database
from medpg.embedding.embedder import Embedder
from medpg.service.app import create_app
from tests.integration.worker_harness import (  # noqa: F401 - redis_url is a fixture
    TEST_QUEUES,
    queue_length,
    redis_url,
)

pytestmark = pytest.mark.integration

SECRET = "zebracorn"  # a word that must never reach a log line or an error body

NOTES = [
    {
        "id": f"n{i}",
        "title": f"Note {i}",
        "text": f"Chest pain and statin therapy for patients with high cholesterol, visit {i}. "
        + ("Breast cancer screening follow-up. " if i % 2 else "Diabetes insulin dose review. "),
        "metadata": {"dept": "cardio" if i % 2 else "endo"},
        "patient_id": f"p{i % 3}",
        "date": f"2024-0{1 + i % 6}-15",
    }
    for i in range(12)
]


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def api_db(
    migrated_db: Callable[..., Database], tiny_bert_dir: Path, tiny_cross_encoder_dir: Path
) -> Iterator[Database]:
    """A database with the tiny medcpt-profile models (32-d vectors, a cross-encoder)."""
    db = migrated_db(
        "api",
        model_profile="medcpt",
        query_model=str(tiny_bert_dir),
        article_model=str(tiny_bert_dir),
        cross_encoder_model=str(tiny_cross_encoder_dir),
        embedding_dim=32,
        chunk_tokens=64,
        chunk_overlap=8,
    )
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def client(api_db: Database) -> Iterator[TestClient]:
    """The app on the module's database, models warmed at start-up."""
    with TestClient(create_app(api_db.settings)) as test_client:
        yield test_client


def make_key(db: Database, *scopes: str, patients: list[str] | None = None, tenant: str = "default") -> str:
    _, token = keys.create_key(db, name="test", tenant=tenant, patients=patients, scopes=list(scopes))
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def writer(api_db: Database) -> dict[str, str]:
    return auth(make_key(api_db, "system/DocumentReference.cruds"))


@pytest.fixture(scope="module")
def admin(api_db: Database) -> dict[str, str]:
    return auth(make_key(api_db, "medpg/admin"))


@pytest.fixture(scope="module")
def notes(client: TestClient, api_db: Database, writer: dict[str, str]) -> list[dict[str, Any]]:
    """NOTES stored through the API (source ``clinic``) and embedded with the tiny model."""
    out = client.post("/documents", json={"source": "clinic", "documents": NOTES}, headers=writer)
    assert out.status_code == 200, out.text
    Embedder(api_db, api_db.settings).embed_pending()
    return NOTES


def document_count(db: Database, source: str | None = None) -> int:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM medpg.documents WHERE %(s)s::text IS NULL OR source = %(s)s", {"s": source}
        ).fetchone()
        conn.rollback()
    assert row is not None
    return int(row[0])


def assert_error(response: Any, status: int, type_name: str) -> dict[str, Any]:
    """The response is the one JSON error shape with this status and type; returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["type"] == type_name, error
    assert error["message"]
    return dict(error)


# --------------------------------------------------------------------------------------------------
# keys and scopes


def test_no_key_unknown_key_or_another_scheme_is_401(client: TestClient) -> None:
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer medpg_0123456789ab_" + "x" * 43},
        {"Authorization": "Bearer not-a-medpg-key"},
        {"X-API-Key": "medpg_0123456789ab_" + "y" * 43},
    ):
        out = client.get("/status", headers=headers)
        assert_error(out, 401, "AuthenticationError")
        assert out.headers["www-authenticate"] == "Bearer"
        assert "x" * 43 not in out.text and "y" * 43 not in out.text  # the token is never echoed


def test_x_api_key_header_is_accepted(client: TestClient, api_db: Database) -> None:
    token = make_key(api_db, "user/DocumentReference.s")
    assert client.get("/status", headers={"X-API-Key": token}).status_code == 200


def test_revoked_key_is_401_at_once(client: TestClient, api_db: Database, admin: dict[str, str]) -> None:
    created = client.post(
        "/admin/keys", json={"name": "short-lived", "scopes": ["user/DocumentReference.rs"]}, headers=admin
    )
    assert created.status_code == 201, created.text
    token, key_id = created.json()["token"], created.json()["key"]["id"]
    assert client.get("/status", headers=auth(token)).status_code == 200
    revoked = client.delete(f"/admin/keys/{key_id}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    out = client.get("/status", headers=auth(token))
    assert_error(out, 401, "AuthenticationError")
    assert "revoked" in out.json()["error"]["message"]


def test_a_key_without_the_scope_is_403(
    client: TestClient, api_db: Database, notes: list[dict[str, Any]]
) -> None:
    reader = auth(make_key(api_db, "user/DocumentReference.r"))
    searcher = auth(make_key(api_db, "user/DocumentReference.s"))
    one = {"source": "clinic", "documents": [NOTES[0]]}
    assert_error(client.post("/documents", json=one, headers=reader), 403, "PermissionDeniedError")
    assert_error(client.delete("/documents/clinic/n0", headers=reader), 403, "PermissionDeniedError")
    assert_error(
        client.post("/search", json={"query": "chest"}, headers=reader), 403, "PermissionDeniedError"
    )
    assert_error(client.get("/documents/clinic/n0", headers=searcher), 403, "PermissionDeniedError")
    assert_error(client.get("/admin/keys", headers=searcher), 403, "PermissionDeniedError")
    assert_error(client.get("/status", headers=reader), 403, "PermissionDeniedError")
    # a 403 says what is missing and carries no data
    denied = client.get("/documents/clinic/n0", headers=searcher)
    assert NOTES[0]["text"][:20] not in denied.text
    assert client.get("/documents/clinic/n0", headers=reader).status_code == 200


def test_admin_keys_are_listed_created_and_revoked_within_the_tenant(
    client: TestClient, api_db: Database, admin: dict[str, str]
) -> None:
    other_tenant = make_key(api_db, "system/DocumentReference.rs", tenant="elsewhere")
    created = client.post(
        "/admin/keys",
        json={"name": "ward 3", "patients": ["p1"], "scopes": ["patient/DocumentReference.rs"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["token"].startswith("medpg_") and body["key"]["tenant"] == "default"
    assert body["key"]["patients"] == ["p1"]
    listed = client.get("/admin/keys", headers=admin)
    assert listed.status_code == 200
    names = {k["id"]: k for k in listed.json()}
    assert body["key"]["id"] in names and all(k["tenant"] == "default" for k in listed.json())
    assert all("token" not in k and "secret_hash" not in k for k in listed.json())
    elsewhere = keys.authenticate(api_db, other_tenant)
    assert_error(client.delete(f"/admin/keys/{elsewhere.id}", headers=admin), 404, "NotFoundError")
    bad = client.post(
        "/admin/keys", json={"name": "x", "scopes": ["patient/DocumentReference.rs"]}, headers=admin
    )
    assert_error(bad, 422, "InputError")  # patient/ scopes need patients
    assert_error(client.delete("/admin/keys/0", headers=admin), 422, "RequestValidationError")
    assert_error(client.delete(f"/admin/keys/{2**70}", headers=admin), 422, "RequestValidationError")


# --------------------------------------------------------------------------------------------------
# documents


def test_upsert_is_idempotent_and_reports_counts(
    client: TestClient, api_db: Database, writer: dict[str, str]
) -> None:
    docs = [
        {"id": f"u{i}", "title": f"Upsert {i}", "text": f"Statin dose {i} for high cholesterol."}
        for i in range(3)
    ]
    first = client.post("/documents", json={"source": "upserts", "documents": docs}, headers=writer)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["inserted"], body["updated"], body["unchanged"]) == (3, 0, 0)
    assert body["ids"] == ["u0", "u1", "u2"] and body["chunks_written"] >= 3
    assert len(body["changed_document_ids"]) == 3 and body["enqueued_chunks"] is None  # no broker

    again = client.post("/documents", json={"source": "upserts", "documents": docs}, headers=writer).json()
    assert (again["inserted"], again["updated"], again["unchanged"], again["chunks_written"]) == (0, 0, 3, 0)
    assert again["changed_document_ids"] == []

    docs[1] = {**docs[1], "text": "Statin dose changed."}
    changed = client.post("/documents", json={"source": "upserts", "documents": docs}, headers=writer).json()
    assert (changed["inserted"], changed["updated"], changed["unchanged"]) == (0, 1, 2)
    assert document_count(api_db, "upserts") == 3


def test_an_invalid_batch_is_422_naming_each_document_and_writes_nothing(
    client: TestClient, api_db: Database, writer: dict[str, str]
) -> None:
    before = document_count(api_db)
    docs = [
        {"id": "ok1", "text": f"fine {SECRET}"},
        {"id": "bad1", "title": f"no text {SECRET}"},  # ingest's rules: text is required
        {"id": "ok1", "text": "the same id twice"},
    ]
    out = client.post("/documents", json={"source": "invalid", "documents": docs}, headers=writer)
    error = assert_error(out, 422, "InputError")
    assert "documents[1]" in error["message"] and "'text'" in error["message"]
    assert "documents[2]" in error["message"] and "duplicate" in error["message"]
    assert SECRET not in out.text
    assert document_count(api_db) == before

    # the shape is checked first: a 422 naming documents[i].field, never the value
    shaped = [
        {"id": "a", "text": "x"},
        {"id": "b", "text": "y", "metadata": [SECRET]},
        {"id": "c", "txt": SECRET},
    ]
    out = client.post("/documents", json={"source": "invalid", "documents": shaped}, headers=writer)
    error = assert_error(out, 422, "RequestValidationError")
    fields = {f["field"] for f in error["fields"]}
    assert {"documents[1].metadata", "documents[2].txt"} <= fields
    assert "documents[1].metadata" in error["message"]
    assert SECRET not in out.text and '"input"' not in out.text
    assert document_count(api_db) == before


def test_batch_limits(client: TestClient, writer: dict[str, str]) -> None:
    many = [{"id": str(i), "text": "x"} for i in range(1001)]
    out = client.post("/documents", json={"source": "big", "documents": many}, headers=writer)
    assert "documents" in {f["field"] for f in assert_error(out, 422, "RequestValidationError")["fields"]}
    empty = client.post("/documents", json={"source": "big", "documents": []}, headers=writer)
    assert_error(empty, 422, "RequestValidationError")
    no_source = client.post(
        "/documents", json={"source": "", "documents": [{"id": "1", "text": "x"}]}, headers=writer
    )
    assert "source" in {f["field"] for f in assert_error(no_source, 422, "RequestValidationError")["fields"]}


def test_get_and_delete_a_document(client: TestClient, api_db: Database, writer: dict[str, str]) -> None:
    doc = {
        "id": "visit/2024/7",
        "title": "Visit",
        "text": "Chest pain.",
        "patient_id": "p9",
        "date": "2024-03-01",
        "metadata": {"ward": 3},
    }
    assert (
        client.post("/documents", json={"source": "getdel", "documents": [doc]}, headers=writer).status_code
        == 200
    )
    got = client.get("/documents/getdel/visit/2024/7", headers=writer)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["id"], body["source"], body["title"], body["text"]) == (
        "visit/2024/7",
        "getdel",
        "Visit",
        "Chest pain.",
    )
    assert (
        body["patient_id"] == "p9"
        and body["metadata"] == {"ward": 3}
        and body["date"].startswith("2024-03-01")
    )
    assert body["chunks"] >= 1 and isinstance(body["document_id"], int)

    assert_error(client.get("/documents/getdel/nope", headers=writer), 404, "NotFoundError")
    deleted = client.delete("/documents/getdel/visit/2024/7", headers=writer)
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(client.get("/documents/getdel/visit/2024/7", headers=writer), 404, "NotFoundError")
    assert_error(client.delete("/documents/getdel/visit/2024/7", headers=writer), 404, "NotFoundError")
    assert document_count(api_db, "getdel") == 0


# --------------------------------------------------------------------------------------------------
# search


def test_a_lexical_backend_this_server_lacks_is_the_callers_error(
    client: TestClient, writer: dict[str, str], notes: list[dict[str, Any]]
) -> None:
    body = {"query": "chest pain", "mode": "lexical", "lexical": "pg_textsearch"}
    out = client.post("/search", json=body, headers=writer)  # the embedded server has no pg_textsearch
    assert out.status_code == 422, out.text
    assert "lexical 'pg_textsearch' is not available on this server" in out.json()["error"]["message"]


@pytest.mark.parametrize("mode", ["lexical", "dense", "hybrid"])
def test_search_each_mode(
    client: TestClient, writer: dict[str, str], notes: list[dict[str, Any]], mode: str
) -> None:
    body = {"query": "chest pain statin", "k": 5, "mode": mode, "filters": {"sources": ["clinic"]}}
    out = client.post("/search", json=body, headers=writer)  # clinic's notes are all embedded
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["mode"] == mode and len(body["results"]) == 5
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    first = body["results"][0]
    assert {
        "document_id",
        "source",
        "external_id",
        "title",
        "patient_id",
        "document_date",
        "score",
    } <= first.keys()
    evidence = first["evidence"]
    assert evidence["text"] and 0 <= evidence["char_start"] < evidence["char_end"]
    explanation = first["explanation"]
    if mode != "dense":
        assert explanation["lexical_rank"] is not None and explanation["matched_terms"]
    if mode != "lexical":
        assert explanation["dense_score"] is not None
    assert "total" in body["timings_ms"] and isinstance(body["warnings"], list)


def test_search_options_and_filters(
    client: TestClient, writer: dict[str, str], notes: list[dict[str, Any]]
) -> None:
    def search(**body: Any) -> dict[str, Any]:
        out = client.post("/search", json={"query": "chest pain", "k": 20, **body}, headers=writer)
        assert out.status_code == 200, out.text
        return dict(out.json())

    cardio = search(filters={"sources": ["clinic"], "metadata": {"dept": "cardio"}})["results"]
    assert cardio and all(r["metadata"]["dept"] == "cardio" and r["source"] == "clinic" for r in cardio)
    patients = search(filters={"patient_ids": ["p1", "p2"]})["results"]
    assert patients and {r["patient_id"] for r in patients} <= {"p1", "p2"}
    dated = search(filters={"date_from": "2024-02-01", "date_to": "2024-04-01"})["results"]
    assert dated and all("2024-02" <= r["document_date"][:7] <= "2024-03" for r in dated)
    nothing = search(filters={"sources": ["nosuchsource"]})
    assert nothing["results"] == [] and any("sources filter" in w for w in nothing["warnings"])

    plain = search(
        mode="hybrid",
        fusion="rrf",
        lexical="ts_rank",
        rerank=False,
        candidates=5,
        explain=False,
        evidence=False,
    )
    assert plain["fusion"] == "rrf" and plain["lexical"] == "ts_rank" and not plain["reranked"]
    assert all(r["explanation"] is None and r["evidence"] is None for r in plain["results"])
    reranked = search(rerank=True, k=3)
    assert reranked["reranked"] and reranked["results"][0]["explanation"]["rerank_score"] is not None
    assert search(query="   ")["results"] == []  # an empty query: no results and a warning


def test_bad_search_requests_are_422_naming_the_field(
    client: TestClient, writer: dict[str, str], api_db: Database
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 101}, "k"),
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "fusion": 3}, "fusion"),
        ({"query": "x", "candidates": 0}, "candidates"),
        ({"query": "x", "filters": {"patient": ["p1"]}}, "filters.patient"),
        ({"query": "x", "filters": {"date_from": "yesterday"}}, "filters.date_from"),
        ({"query": "x", "filters": {"sources": []}}, "filters.sources"),
        ({"k": 3}, "query"),
        ({"query": SECRET, "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        out = client.post("/search", json=body, headers=writer)
        error = assert_error(out, 422, "RequestValidationError")
        assert field in {f["field"] for f in error["fields"]}, (body, error)
        assert SECRET not in out.text
    malformed = client.post("/search", content=b'{"query": "' + SECRET.encode() + b'", ', headers=writer)
    assert_error(malformed, 422, "RequestValidationError")
    assert SECRET not in malformed.text

    short = api_db.settings.with_changes(max_query_chars=10)
    with TestClient(create_app(short, warm_models=False)) as small:
        out = small.post("/search", json={"query": SECRET * 2}, headers=writer)
        assert "query" in {f["field"] for f in assert_error(out, 422, "RequestValidationError")["fields"]}
        assert SECRET not in out.text


def test_a_key_bound_to_patients_searches_only_them(
    client: TestClient, api_db: Database, notes: list[dict[str, Any]]
) -> None:
    bound = auth(make_key(api_db, "patient/DocumentReference.rs", patients=["p1"]))
    out = client.post("/search", json={"query": "chest pain", "k": 20}, headers=bound)
    assert out.status_code == 200, out.text
    results = out.json()["results"]
    assert results and {r["patient_id"] for r in results} == {"p1"}
    own = client.post("/search", json={"query": "chest", "filters": {"patient_ids": ["p1"]}}, headers=bound)
    assert own.status_code == 200
    other = client.post(
        "/search", json={"query": "chest", "filters": {"patient_ids": ["p1", "p2"]}}, headers=bound
    )
    error = assert_error(other, 403, "PermissionDeniedError")
    assert "row-level security" in error["message"] and "p2" not in error["message"]
    # reads follow the same scope: another patient's document does not exist for this key
    assert_error(client.get("/documents/clinic/n0", headers=bound), 404, "NotFoundError")  # n0 is p0's
    assert client.get("/documents/clinic/n1", headers=bound).status_code == 200


def test_status_counts_within_the_scope(
    client: TestClient, api_db: Database, notes: list[dict[str, Any]]
) -> None:
    searcher = auth(make_key(api_db, "user/DocumentReference.s"))
    out = client.get("/status", headers=searcher)
    assert out.status_code == 200, out.text
    assert out.json()["documents"] >= len(NOTES)
    other_tenant = auth(make_key(api_db, "medpg/admin", tenant="empty-tenant"))
    assert client.get("/status", headers=other_tenant).json()["documents"] == 0


# --------------------------------------------------------------------------------------------------
# health and metrics


def test_health_reports_each_part(client: TestClient) -> None:
    out = client.get("/health")
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok" and body["database"]["revision"]
    assert body["broker"] == {"status": "not_configured"}
    assert body["models"]["query_encoder"]["status"] == "ok"
    assert body["models"]["cross_encoder"]["status"] == "ok"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_is_503_when_the_database_is_down(make_settings: Callable[..., Settings]) -> None:
    down = make_settings(database_url=f"postgresql://medpg@127.0.0.1:{closed_port()}/medpg")
    with TestClient(create_app(down, warm_models=False)) as c:
        out = c.get("/health")
        assert out.status_code == 503
        body = out.json()
        assert body["status"] == "error" and body["database"]["error"] == "DatabaseUnavailableError"
        assert "127.0.0.1" not in out.text  # no server address on an unauthenticated route
        assert c.get("/metrics").status_code == 200  # a scrape still answers: medpg_database_up 0
        assert "medpg_database_up 0.0" in c.get("/metrics").text
        assert_error(
            c.get("/status", headers=auth("medpg_0123456789ab_" + "z" * 43)), 503, "DatabaseUnavailableError"
        )


def test_a_broker_that_is_down_degrades_health_and_fails_no_upsert(
    api_db: Database, writer: dict[str, str]
) -> None:
    settings = api_db.settings.with_changes(broker_url=f"redis://127.0.0.1:{closed_port()}/0", **TEST_QUEUES)
    with TestClient(create_app(settings, warm_models=False)) as c:
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["broker"]["status"] == "error"
        docs = [{"id": "b1", "text": "Chest pain while the broker is down."}]
        out = c.post("/documents", json={"source": "brokerdown", "documents": docs}, headers=writer)
        assert out.status_code == 200, out.text
        assert out.json()["inserted"] == 1 and out.json()["enqueued_chunks"] is None


def test_upsert_enqueues_embedding_with_a_broker(
    api_db: Database,
    writer: dict[str, str],
    redis_url: str,  # noqa: F811 - the fixture
) -> None:
    settings = api_db.settings.with_changes(broker_url=redis_url, **TEST_QUEUES)
    with TestClient(create_app(settings, warm_models=False)) as c:
        assert c.get("/health").json()["broker"] == {"status": "ok"}
        docs = [{"id": f"q{i}", "text": f"Queued note {i} about insulin."} for i in range(3)]
        out = c.post("/documents", json={"source": "queued", "documents": docs}, headers=writer)
        assert out.status_code == 200, out.text
        assert out.json()["enqueued_chunks"] >= 3
        assert queue_length(redis_url, settings.embed_queue) >= 1


def test_metrics_count_requests_per_route_template(
    client: TestClient, writer: dict[str, str], notes: list[dict[str, Any]]
) -> None:
    client.get("/documents/clinic/n3", headers=writer)
    client.get("/documents/clinic/does-not-exist", headers=writer)
    client.post("/search", json={"query": SECRET}, headers=writer)
    text = client.get("/metrics").text
    template = 'route="/documents/{source}/{external_id}"'
    assert f'medpg_http_requests_total{{method="GET",{template},status="200"}}' in text
    assert f'medpg_http_requests_total{{method="GET",{template},status="404"}}' in text
    assert 'medpg_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert "medpg_http_request_duration_seconds_bucket" in text
    assert 'medpg_embedding_backlog_chunks{state="pending"}' in text
    assert 'medpg_embedding_backlog_chunks{state="failed"}' in text
    assert "n3" not in text and "does-not-exist" not in text and SECRET not in text


def test_separate_apps_have_separate_metrics(api_db: Database) -> None:
    with (
        TestClient(create_app(api_db.settings, warm_models=False)) as a,
        TestClient(create_app(api_db.settings, warm_models=False)) as b,
    ):
        a.get("/health")
        assert 'route="/health"' in a.get("/metrics").text
        assert 'route="/health"' not in b.get("/metrics").text


# --------------------------------------------------------------------------------------------------
# limits, errors, logs


def test_a_body_over_the_limit_is_413(api_db: Database, writer: dict[str, str]) -> None:
    small = api_db.settings.with_changes(api_max_body_bytes=1024)
    docs = [{"id": "big", "text": SECRET * 200}]
    with TestClient(create_app(small, warm_models=False)) as c:
        out = c.post("/documents", json={"source": "big", "documents": docs}, headers=writer)
        assert_error(out, 413, "PayloadTooLargeError")
        assert SECRET not in out.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they come
            yield b'{"source": "big", "documents": [{"id": "big", "text": "'
            for _ in range(10):
                yield SECRET.encode() * 20
            yield b'"}]}'

        streamed = c.post(
            "/documents", content=chunks(), headers={**writer, "Content-Type": "application/json"}
        )
        assert_error(streamed, 413, "PayloadTooLargeError")
        assert 'route="/documents",status="413"' in c.get("/metrics").text
        fits = c.post(
            "/documents", json={"source": "big", "documents": [{"id": "s", "text": "small"}]}, headers=writer
        )
        assert fits.status_code == 200, fits.text
    assert document_count(api_db, "big") == 1


def test_errors_are_json_and_an_unexpected_one_says_nothing(
    api_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(api_db.settings, warm_models=False)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"a driver message quoting a row: {SECRET}")

    with TestClient(app, raise_server_exceptions=False) as c:
        assert_error(c.get("/no/such/route"), 404, "HTTPException")
        assert_error(c.put("/search"), 405, "HTTPException")
        with caplog.at_level(logging.INFO, logger="medpg.service"):
            out = c.get("/boom")
        error = assert_error(out, 500, "InternalServerError")
        assert SECRET not in error["message"]
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "RuntimeError" in logged and SECRET not in logged
        assert "GET /boom 500" in logged


def test_the_access_log_has_templates_and_key_ids_only(
    client: TestClient, api_db: Database, notes: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    token = make_key(api_db, "user/DocumentReference.rs")
    key_id = keys.authenticate(api_db, token).id
    with caplog.at_level(logging.INFO, logger="medpg.service.access"):
        client.post("/search", json={"query": f"chest {SECRET}"}, headers=auth(token))
        client.get(f"/documents/clinic/n5?{SECRET}=1", headers={**auth(token), "X-Request-ID": "req-42"})
    lines = [r.getMessage() for r in caplog.records if r.name == "medpg.service.access"]
    assert any(ln.startswith("POST /search 200 ") and f"key={key_id}" in ln for ln in lines), lines
    assert any(
        ln.startswith("GET /documents/{source}/{external_id} 200 ") and "request_id=req-42" in ln
        for ln in lines
    ), lines
    assert not any(SECRET in ln or "n5" in ln for ln in lines)


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/health", headers={"X-Request-ID": "not ok\x7f" + SECRET * 10}).headers["x-request-id"]
    assert len(made) == 32 and SECRET not in made


def test_openapi_describes_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/documents",
        "/documents/{source}/{external_id}",
        "/search",
        "/status",
        "/health",
        "/admin/keys",
    ):
        assert path in spec["paths"], path
    search = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert search["k"]["maximum"] == 100 and search["query"]["maxLength"] == 16_384


# --------------------------------------------------------------------------------------------------
# FHIR DocumentReference

FHIR_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
FHIR_HEADERS = {"Content-Type": "application/fhir+json"}


def fhir_fixture(name: str) -> dict[str, Any]:
    return dict(orjson.loads((FHIR_FIXTURES / name).read_bytes()))


def assert_outcome(response: Any, status: int, code: str | None) -> list[dict[str, Any]]:
    """An OperationOutcome with this status and an issue of this code (None: any); returns the issues."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert code is None or any(i["code"] == code for i in body["issue"]), body
    return list(body["issue"])


@pytest.fixture(scope="module")
def fhir_docs(client: TestClient, writer: dict[str, str]) -> dict[str, Any]:
    """The progress note alone, then the transaction Bundle (which updates it and adds two)."""
    one = client.post(
        "/fhir/DocumentReference",
        content=orjson.dumps(fhir_fixture("progress-note.json")),
        headers={**writer, **FHIR_HEADERS},
    )
    assert one.status_code == 201, one.text
    bundle = client.post(
        "/fhir/DocumentReference", json=fhir_fixture("transaction-bundle.json"), headers=writer
    )
    assert bundle.status_code == 201, bundle.text
    return {"one": one, "bundle": bundle}


def test_fhir_create_answers_201_with_the_stored_ids(fhir_docs: dict[str, Any]) -> None:
    one, bundle = fhir_docs["one"], fhir_docs["bundle"]
    assert one.headers["content-type"].startswith("application/fhir+json")
    assert one.headers["location"].endswith("/fhir/DocumentReference/note-1")
    resource = one.json()
    assert resource["resourceType"] == "DocumentReference" and resource["id"] == "note-1"
    assert "data" not in resource["content"][0]["attachment"]  # the text is not echoed back
    answer = bundle.json()
    assert answer["resourceType"] == "Bundle" and answer["type"] == "transaction-response"
    locations = [e["response"]["location"] for e in answer["entry"]]
    assert locations == [
        "DocumentReference/note-1",
        "DocumentReference/note-html",
        "DocumentReference/note-contained",
    ]


def test_fhir_read_returns_the_resource_with_its_text(
    client: TestClient, writer: dict[str, str], fhir_docs: dict[str, Any]
) -> None:
    import base64

    out = client.get("/fhir/DocumentReference/note-1", headers=writer)
    assert out.status_code == 200, out.text
    assert out.headers["content-type"].startswith("application/fhir+json")
    resource = out.json()
    assert resource["id"] == "note-1" and resource["subject"] == {"reference": "Patient/123"}
    assert resource["type"]["coding"][0]["code"] == "11506-3"
    text = base64.b64decode(resource["content"][0]["attachment"]["data"]).decode()
    assert "chest pain" in text
    assert_outcome(client.get("/fhir/DocumentReference/no-such-note", headers=writer), 404, "not-found")
    assert_outcome(client.get("/fhir/DocumentReference/bad%20id!", headers=writer), 422, "invalid")


def test_fhir_search_without_and_with_text(
    client: TestClient, writer: dict[str, str], fhir_docs: dict[str, Any]
) -> None:
    def search(query: str) -> dict[str, Any]:
        out = client.get(f"/fhir/DocumentReference?{query}", headers=writer)
        assert out.status_code == 200, out.text
        assert out.headers["content-type"].startswith("application/fhir+json")
        bundle = dict(out.json())
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        return bundle

    def ids(bundle: dict[str, Any]) -> list[str]:
        return [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]

    assert sorted(ids(search("patient=123"))) == ["note-1", "note-contained"]
    assert ids(search("patient=456&category=clinical-note")) == ["note-html"]
    assert ids(search("patient=123&type=http://loinc.org|11506-3")) == ["note-1"]
    assert ids(search("patient=123&status=superseded")) == ["note-contained"]
    assert ids(search("_id=note-html")) == ["note-html"]
    assert len(ids(search("patient=123&_count=1"))) == 1
    assert ids(search("patient=123&date=ge2030-01-01")) == []

    ranked = search("patient=123&_text=chest pain metoprolol&_count=5")
    assert ids(ranked) and set(ids(ranked)) <= {"note-1", "note-contained"}
    first = ranked["entry"][0]
    assert first["search"]["mode"] == "match" and isinstance(first["search"]["score"], float)
    assert first["fullUrl"].endswith("/fhir/DocumentReference/" + first["resource"]["id"])


def test_fhir_errors_are_operation_outcomes(
    client: TestClient, api_db: Database, writer: dict[str, str], fhir_docs: dict[str, Any]
) -> None:
    for element, value, expression in (
        ("status", "bogus-" + SECRET, "DocumentReference.status"),
        ("date", SECRET, "DocumentReference.date"),
    ):
        bad = {**fhir_fixture("progress-note.json"), element: value}
        out = client.post("/fhir/DocumentReference", json=bad, headers=writer)
        issues = assert_outcome(out, 422, None)
        assert any(e.startswith(expression) for i in issues for e in i.get("expression", [])), issues
        assert SECRET not in out.text
    bad = fhir_fixture("progress-note.json")
    bad["content"][0]["attachment"]["data"] = "%%%" + SECRET
    out = client.post("/fhir/DocumentReference", json=bad, headers=writer)
    issues = assert_outcome(out, 422, "invalid")
    assert (
        issues[0]["expression"] == ["DocumentReference.content[0].attachment.data"] and SECRET not in out.text
    )

    bundle = fhir_fixture("transaction-bundle.json")
    bundle["entry"][1]["resource"]["subject"] = 7
    before = document_count(api_db, "fhir")
    issues = assert_outcome(
        client.post("/fhir/DocumentReference", json=bundle, headers=writer), 422, "invalid"
    )
    assert any(
        e.startswith("Bundle.entry[1].resource.subject") for i in issues for e in i.get("expression", [])
    )
    assert document_count(api_db, "fhir") == before

    no_key = client.get("/fhir/DocumentReference?patient=123")
    assert_outcome(no_key, 401, "login")
    assert no_key.headers["www-authenticate"] == "Bearer"
    reader = auth(make_key(api_db, "user/DocumentReference.r"))
    assert_outcome(client.get("/fhir/DocumentReference?patient=123", headers=reader), 403, "forbidden")
    assert_outcome(client.get("/fhir/DocumentReference?colour=red", headers=writer), 422, "not-supported")
    assert_outcome(client.get("/fhir/DocumentReference?_count=500", headers=writer), 422, "too-costly")
    assert_outcome(client.get("/fhir/Patient/123", headers=writer), 404, "not-found")
    assert_outcome(client.post("/fhir/DocumentReference", content=b"[1, 2", headers=writer), 422, "invalid")
    bound = auth(make_key(api_db, "patient/DocumentReference.rs", patients=["123"]))
    assert_outcome(client.get("/fhir/DocumentReference?patient=456", headers=bound), 403, "forbidden")
    assert client.get("/fhir/DocumentReference?patient=123", headers=bound).status_code == 200


# --------------------------------------------------------------------------------------------------
# `medpg search` through a running service


class RunningService:
    """The app under a real uvicorn server in a thread, on a free port."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.port = closed_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, access_log=False, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningService:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def cli_env(db: Database, tiny_bert_dir: Path, tiny_cross_encoder_dir: Path) -> dict[str, str]:
    return {
        "MEDPG_DATABASE_URL": str(db.settings.database_url),
        "MEDPG_MODEL_PROFILE": "medcpt",
        "MEDPG_QUERY_MODEL": str(tiny_bert_dir),
        "MEDPG_ARTICLE_MODEL": str(tiny_bert_dir),
        "MEDPG_CROSS_ENCODER_MODEL": str(tiny_cross_encoder_dir),
        "MEDPG_EMBEDDING_DIM": "32",
        "MEDPG_CHUNK_TOKENS": "64",
        "MEDPG_CHUNK_OVERLAP": "8",
        "MEDPG_DEVICE": "cpu",
    }


def test_cli_search_uses_a_running_service_and_falls_back_without_one(
    api_db: Database,
    notes: list[dict[str, Any]],
    tiny_bert_dir: Path,
    tiny_cross_encoder_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from medpg.cli import app as cli
    from medpg.config import get_settings

    token = make_key(api_db, "system/DocumentReference.rs")
    for name, value in cli_env(api_db, tiny_bert_dir, tiny_cross_encoder_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    args = [
        "search",
        "chest pain statin",
        "-k",
        "4",
        "--source",
        "clinic",
        "--metadata",
        '{"dept": "cardio"}',
    ]
    runner = CliRunner()

    def run(*options: str, **env: str) -> Any:
        """``medpg [-v] search ... [--json]``: -v goes before the command, other options after."""
        root = [o for o in options if o == "-v"]
        get_settings.cache_clear()
        try:
            return runner.invoke(cli, [*root, *args, *(o for o in options if o != "-v")], env=env)
        finally:
            get_settings.cache_clear()

    def table(out: Any) -> list[str]:
        return [ln for ln in out.stdout.splitlines() if "total" not in ln]  # timings differ

    def without_timings(out: Any) -> dict[str, Any]:
        data = dict(orjson.loads(out.stdout))
        data.pop("timings_ms")
        return data

    here = run("-v")  # no MEDPG_API_KEY: in this process, nothing said about a service
    assert here.exit_code == 0, here.output
    assert "service" not in here.stderr
    here_json = run("--json")
    with RunningService(api_db.settings) as service:
        remote = run("-v", MEDPG_API_KEY=token, MEDPG_API_URL=service.url)
        assert remote.exit_code == 0, remote.output
        assert f"searched through the medpg service at {service.url}" in remote.stderr
        assert "loading the query encoder" not in remote.stderr  # the service's models are warm
        assert table(remote) == table(here)  # the same table from the service or from this process
        remote_json = run("--json", MEDPG_API_KEY=token, MEDPG_API_URL=service.url)
        assert without_timings(remote_json) == without_timings(here_json)

        bad_key = run(MEDPG_API_KEY="medpg_0123456789ab_" + "k" * 43, MEDPG_API_URL=service.url)
        assert bad_key.exit_code == 6, bad_key.output
        assert "unknown API key" in bad_key.stderr and "MEDPG_API_KEY" in bad_key.stderr
    down = run("-v", MEDPG_API_KEY=token, MEDPG_API_URL=f"http://127.0.0.1:{closed_port()}")
    assert down.exit_code == 0, down.output
    assert "searching in this process" in down.stderr and table(down) == table(here)


def test_medpg_serve_logs_route_templates_and_not_uvicorns_access_lines(
    api_db: Database, tiny_bert_dir: Path, tiny_cross_encoder_dir: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    import httpx

    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(cli_env(api_db, tiny_bert_dir, tiny_cross_encoder_dir))
    env.update(MEDPG_API_PORT=str(port), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    server = subprocess.Popen(
        [sys.executable, "-m", "medpg.cli", "serve", "--no-warm"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"medpg serve did not start: {server.communicate(timeout=30)[0][-3000:]}")
            time.sleep(0.2)
        assert httpx.get(f"{url}/documents/clinic/{SECRET}?q={SECRET}").status_code == 401
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    assert f"medpg service on {url}" in output
    assert "GET /documents/{source}/{external_id} 401" in output and "GET /health 200" in output
    assert SECRET not in output  # neither the path nor the query string reaches the log
