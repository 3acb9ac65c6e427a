"""Ingestion into the real embedded PostgreSQL: idempotency, bad input, offsets, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from medpg.config import Settings
from medpg.db import Database
from medpg.errors import InputError
from medpg.ingest import ingest_file
from tests.conftest import DATA_DIR, truncate

pytestmark = pytest.mark.integration

NFCORPUS = DATA_DIR / "nfcorpus" / "corpus.jsonl"
NOTES = DATA_DIR / "mtsamples" / "notes.jsonl"


@pytest.fixture(autouse=True)
def _empty(db: Database) -> Iterator[None]:
    truncate(db)
    yield


def _sample(tmp_path: Path, n: int, name: str = "sample.jsonl") -> Path:
    lines = NFCORPUS.read_bytes().splitlines()[:n]
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _snapshot(db: Database) -> dict[str, object]:
    """Every row's physical version (xmin): any write to a row changes it."""
    with db.connect() as conn:
        docs = conn.execute("SELECT external_id, xmin::text, updated_at FROM medpg.documents").fetchall()
        chunks = conn.execute("SELECT id, xmin::text FROM medpg.chunks").fetchall()
    return {"docs": sorted(docs), "chunks": sorted(chunks)}


def _counts(db: Database) -> tuple[int, int]:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM medpg.documents), (SELECT count(*) FROM medpg.chunks)"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_reingest_changes_nothing(db: Database, tmp_path: Path) -> None:
    path = _sample(tmp_path, 300)
    first = ingest_file(db, db.settings, path, progress=False)
    assert (first.inserted, first.updated, first.unchanged, first.source) == (300, 0, 0, "sample")
    before = _snapshot(db)
    second = ingest_file(db, db.settings, path, progress=False)
    assert (second.inserted, second.updated, second.unchanged, second.chunks_written) == (0, 0, 300, 0)
    assert _snapshot(db) == before


def test_changed_body_remarks_exactly_that_documents_chunks(db: Database, tmp_path: Path) -> None:
    path = _sample(tmp_path, 200)
    ingest_file(db, db.settings, path, progress=False)
    with db.connect() as conn:  # pretend everything was embedded
        conn.execute("UPDATE medpg.chunks SET embedded_hash = content_hash")
        conn.commit()
    docs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    target = docs[17]
    target["text"] = target["text"] + " An added sentence about vitamin D."
    docs[42]["metadata"] = {"note": "metadata only"}  # changes the row, not the passage text
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in docs) + b"\n")

    report = ingest_file(db, db.settings, path, progress=False)
    assert (report.inserted, report.updated, report.unchanged) == (0, 2, 198)
    with db.connect() as conn:
        pending = conn.execute(
            """
            SELECT d.external_id FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id
            WHERE c.embedded_hash IS DISTINCT FROM c.content_hash
            """
        ).fetchall()
        body = conn.execute(
            "SELECT body FROM medpg.documents WHERE external_id = %s", (target["_id"],)
        ).fetchone()[0]  # type: ignore[index]
    assert {p[0] for p in pending} == {target["_id"]}
    assert body.endswith("vitamin D.")


def test_long_documents_are_chunked_with_exact_offsets(db: Database) -> None:
    report = ingest_file(db, db.settings, NOTES, progress=False)
    assert report.inserted == 401  # four notes have a title and no text: searchable by title
    with db.connect() as conn:
        rows = conn.execute(
            """
            SELECT count(*) FILTER (WHERE substr(d.body, c.char_start + 1, c.char_end - c.char_start) <> c.text),
                   count(DISTINCT c.document_id) FILTER (WHERE c.ordinal > 0),
                   max(c.token_count)
            FROM medpg.chunks c JOIN medpg.documents d ON d.id = c.document_id
            """
        ).fetchone()
        # metadata is kept as given
        specialty = conn.execute(
            "SELECT metadata->>'specialty' FROM medpg.documents WHERE metadata ? 'specialty' LIMIT 1"
        ).fetchone()
    assert rows is not None and rows[0] == 0, "every chunk's offsets reproduce its text"
    assert rows[1] > 20, "long notes have several chunks"
    assert rows[2] <= db.settings.article_max_tokens
    assert specialty is not None


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = [orjson.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"Body number {i}."}) for i in range(5)]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (b'{"_id": "x", "text": "unterminated', "invalid JSON"),
        (b'{"title": "no id", "text": "body"}', "missing field 'id'"),
        (b'{"_id": "x", "title": "no text"}', "missing field 'text'"),
        (b'{"_id": "x", "text": "   "}', "field 'text' is empty and there is no title"),
        (b'{"_id": "x", "text": "nul \\u0000 byte"}', "NUL byte"),
        (b'{"_id": "x", "text": "bad \xff\xfe utf-8"}', "invalid UTF-8"),
        (b'{"_id": "x", "text": "' + b"a" * 5000 + b'"}', "over the size limit|over the limit"),
        (b'{"_id": "d1", "text": "duplicate"}', "duplicate id in field '_id' \\(first seen on line 2\\)"),
        (b'{"_id": "x", "text": "t", "metadata": [1]}', "'metadata' must be an object"),
        (b'{"_id": "x", "text": "t", "date": "yesterday"}', "not an ISO 8601 date"),
        (b'["not", "an", "object"]', "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line_and_write_nothing(
    migrated_db: Callable[..., Database],
    tmp_path: Path,
    bad_line: bytes,
    message: str,
    request: pytest.FixtureRequest,
) -> None:
    db = _small_limit_db(migrated_db, request)
    truncate(db)
    path = _write(tmp_path / "bad.jsonl", [*GOOD[:3], bad_line, *GOOD[3:]])
    with pytest.raises(InputError, match=rf"bad\.jsonl:4: (.*)({message})") as exc:
        ingest_file(db, db.settings, path, progress=False)
    assert "nothing was written" in str(exc.value)
    assert _counts(db) == (0, 0)

    report = ingest_file(db, db.settings, path, progress=False, skip_invalid=True)
    assert [e.line for e in report.skipped] == [4]
    assert report.inserted == 5
    assert _counts(db)[0] == 5


_SMALL: dict[str, Database] = {}


def _small_limit_db(migrated_db: Callable[..., Database], request: pytest.FixtureRequest) -> Database:
    if "db" not in _SMALL:
        _SMALL["db"] = migrated_db("ingest_small_limit", max_document_bytes=4000)
        request.addfinalizer(lambda: _SMALL.pop("db").dispose())
    return _SMALL["db"]


def test_existing_rows_survive_a_failed_file(db: Database, tmp_path: Path) -> None:
    good = _write(tmp_path / "good.jsonl", GOOD)
    ingest_file(db, db.settings, good, progress=False)
    before = _snapshot(db)
    changed = [orjson.dumps({"_id": "d0", "text": "changed"}), b"{broken"]
    bad = _write(tmp_path / "good.jsonl", changed)
    with pytest.raises(InputError, match=r"good\.jsonl:2: invalid JSON"):
        ingest_file(db, db.settings, bad, progress=False)
    assert _snapshot(db) == before


def test_csv_with_a_column_mapping(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text(
        "note_id,subject,note_text,mrn,written,ward\n"
        'n1,Discharge summary,"Patient admitted with chest pain, ruled out MI.",p-001,2024-03-01,cardiology\n'
        "n2,,Follow-up visit: blood pressure controlled.,p-002,2024-03-05T10:00:00+00:00,\n",
        encoding="utf-8",
    )
    report = ingest_file(
        db,
        db.settings,
        path,
        progress=False,
        csv_map="id=note_id,title=subject,text=note_text,patient_id=mrn,date=written",
    )
    assert report.inserted == 2
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT external_id, title, patient_id, document_date::date::text, metadata FROM medpg.documents "
            "ORDER BY external_id"
        ).fetchall()
    assert rows[0] == ("n1", "Discharge summary", "p-001", "2024-03-01", {"ward": "cardiology"})
    assert rows[1] == ("n2", "", "p-002", "2024-03-05", {})


def test_csv_missing_mapped_column_is_named(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text("id,body\n1,text\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"notes\.csv:1: the CSV header has no column 'text'"):
        ingest_file(db, db.settings, path, progress=False)


def _cli(args: list[str], settings: Settings, **kw: object) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPG_")}
    env.update(
        MEDPG_DATABASE_URL=str(settings.database_url),
        MEDPG_MODEL_PROFILE="minilm",
        MEDPG_DATA_DIR=str(settings.data_dir),
        MEDPG_INGEST_BATCH_SIZE="100",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "medpg.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_concurrent_ingest_of_one_file_leaves_no_duplicates(db: Database, tmp_path: Path) -> None:
    path = _sample(tmp_path, 2000, "corpus.jsonl")
    procs = [_cli(["ingest", str(path), "--no-progress"], db.settings) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    with db.connect() as conn:
        row = conn.execute(
            """
            SELECT count(*), count(DISTINCT (source, external_id)),
                   (SELECT count(*) FROM medpg.chunks),
                   (SELECT count(DISTINCT (document_id, ordinal)) FROM medpg.chunks)
            FROM medpg.documents
            """
        ).fetchone()
    assert row == (2000, 2000, row[2], row[2])  # type: ignore[index]
    assert row[2] >= 2000  # type: ignore[index]
    # the two runs together inserted each document exactly once
    text = b"".join(o for o, _ in outs).decode()
    new = sum(int(part.split(" new")[0].rsplit(" ", 1)[-1]) for part in text.split("documents — ")[1:])
    assert new == 2000, text


def test_cli_bad_file_is_one_line_and_nonzero(db: Database, tmp_path: Path) -> None:
    path = _write(tmp_path / "broken.jsonl", [GOOD[0], b"{oops"])
    proc = _cli(["ingest", str(path)], db.settings)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4
    assert b"Traceback" not in err
    assert b"broken.jsonl:2: invalid JSON" in err
    assert _counts(db) == (0, 0)


@pytest.mark.parametrize("kind", ["missing", "directory", "beir"])
def test_cli_names_a_missing_file_or_directory_in_one_line(db: Database, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "scifact"
    if kind != "missing":
        target.mkdir()
    if kind == "beir":
        _write(target / "corpus.jsonl", GOOD)
    proc = _cli(["ingest", str(target), "--no-progress"], db.settings)
    out, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err
    if kind == "beir":
        assert proc.returncode == 0, err.decode()
        assert b"(source 'scifact'): 5 documents" in out
        assert _counts(db)[0] == 5
        return
    assert proc.returncode == 4
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    expected = "no such file" if kind == "missing" else "is a directory without a corpus.jsonl"
    assert expected in lines[0]
