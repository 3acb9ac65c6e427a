"""Hostile and unlucky input against the real PostgreSQL: dates, database limits, failed batches."""

from __future__ import annotations

import random
import re
import secrets
import string
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from medpg.db import Database
from medpg.errors import InputError, MedpgError
from medpg.ingest import ingest_file
from tests.conftest import truncate

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _empty(db: Database) -> Iterator[None]:
    truncate(db)
    yield


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def _ids(db: Database) -> set[str]:
    with db.connect() as conn:
        return {r[0] for r in conn.execute("SELECT external_id FROM medpg.documents")}


def _good(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"_id": f"d{i}", "title": f"T{i}", "text": f"Body number {i}."} for i in range(start, start + n)]


def test_date_that_reads_back_outside_years_1_to_9999_is_refused(db: Database, tmp_path: Path) -> None:
    rows = [*_good(2), {"_id": "bc", "text": "t", "date": "0001-01-01T00:00:00+14:00"}]
    path = _write(tmp_path / "dates.jsonl", rows)
    with pytest.raises(InputError, match=r"dates\.jsonl:3: field 'date' is outside years 1-9999"):
        ingest_file(db, db.settings, path, progress=False)
    assert _ids(db) == set()
    report = ingest_file(db, db.settings, path, progress=False, skip_invalid=True)
    assert [e.line for e in report.skipped] == [3]
    with db.connect() as conn:  # what is stored can be read back
        assert conn.execute("SELECT count(document_date) FROM medpg.documents").fetchone() == (0,)


def _incompressible(n: int) -> str:
    return secrets.token_urlsafe(n)[:n]


def _tsvector_bomb(size: int) -> str:
    """Distinct random words: a body whose tsvector is about 1.4 times its size."""
    rnd = random.Random(7)
    words = ("".join(rnd.choices(string.ascii_lowercase, k=8)) for _ in range(size // 9))
    return " ".join(words)


def test_database_limits_are_checked_before_writing(db: Database, tmp_path: Path) -> None:
    bad = {
        2: {"_id": _incompressible(3000), "text": "over the btree limit"},
        3: {"_id": _incompressible(2100), "text": "over medpg's id limit, under PostgreSQL's"},
        4: {"_id": "€" * 700, "text": "700 characters, 2100 bytes"},
        6: {"_id": "p", "text": "long patient id", "patient_id": _incompressible(10_000)},
        7: {"_id": "big", "text": _tsvector_bomb(1_900_000)},
    }
    rows: list[Any] = _good(7)
    for line, row in bad.items():
        rows[line - 1] = row
    path = _write(tmp_path / "limits.jsonl", rows)
    with pytest.raises(InputError) as exc:
        ingest_file(db, db.settings, path, progress=False)
    message = str(exc.value)
    assert "nothing was written" in message
    for line, field in [(2, "'_id'"), (3, "'_id'"), (4, "'_id'"), (6, "'patient_id'"), (7, "'text'")]:
        assert re.search(rf"limits\.jsonl:{line}: .*{field}", message), (line, message)
    assert "tsvector" in message
    assert _ids(db) == set()

    report = ingest_file(db, db.settings, path, progress=False, skip_invalid=True)
    assert sorted(e.line for e in report.skipped) == sorted(bad)
    assert _ids(db) == {"d0", "d4"}


def test_source_name_counts_towards_the_id_limit(db: Database, tmp_path: Path) -> None:
    path = _write(tmp_path / "s.jsonl", [{"_id": "x" * 1500, "text": "t"}, {"_id": "short", "text": "t"}])
    with pytest.raises(InputError, match=r"s\.jsonl:1: field '_id'"):
        ingest_file(db, db.settings, path, progress=False, source="s" * 600)
    with pytest.raises(InputError, match="source"):
        ingest_file(db, db.settings, path, progress=False, source="s" * 1200)
    assert _ids(db) == set()


@pytest.fixture(scope="module")
def poisoned_db(migrated_db: Callable[..., Database]) -> Iterator[Database]:
    """A database whose documents table refuses a body containing 'poison' (a refusal validation cannot know)."""
    database = migrated_db("ingest_poisoned", ingest_batch_size=10, ingest_workers=2)
    with database.connect() as conn:
        conn.execute(
            "ALTER TABLE medpg.documents ADD CONSTRAINT no_poison CHECK (position('poison' in body) = 0)"
        )
        conn.commit()
    yield database
    database.dispose()


def _committed_lines(message: str) -> set[int]:
    """The lines a failure message says were committed ("Committed: lines 1-10, 21-30.")."""
    match = re.search(r"Committed: lines ([0-9, -]+)\.", message)
    if match is None:
        assert "Nothing was committed" in message, message
        return set()
    lines: set[int] = set()
    for part in match.group(1).split(","):
        first, _, last = part.strip().partition("-")
        lines.update(range(int(first), int(last or first) + 1))
    return lines


@pytest.mark.parametrize("poison_line", [5, 15, 45])
def test_a_row_refused_by_the_database_is_named_and_the_committed_lines_are_told_truthfully(
    poisoned_db: Database, tmp_path: Path, poison_line: int
) -> None:
    db = poisoned_db
    truncate(db)
    rows = _good(50)
    rows[poison_line - 1] = {"_id": "bad", "text": "a poison pill"}
    path = _write(tmp_path / "poison.jsonl", rows)
    with pytest.raises(MedpgError) as exc:
        ingest_file(db, db.settings, path, progress=False)
    message = str(exc.value)
    assert f"poison.jsonl:{poison_line}:" in message, message
    assert "poison pill" not in message  # no document text
    stored = _ids(db)
    committed = _committed_lines(message)
    assert stored == {rows[line - 1]["_id"] for line in committed}, message
    assert poison_line not in committed

    # --skip-invalid skips the refused row and writes every other one.
    report = ingest_file(db, db.settings, path, progress=False, skip_invalid=True)
    assert [e.line for e in report.skipped] == [poison_line]
    assert _ids(db) == {r["_id"] for r in rows} - {"bad"}


@pytest.mark.parametrize("date", ["2024-01-01T00:00:00+20:00", "2024-01-01T00:00:00+15:59:59.5"])
def test_offsets_python_accepts_and_postgresql_does_not_are_stored_as_utc(
    db: Database, tmp_path: Path, date: str
) -> None:
    path = _write(tmp_path / "offsets.jsonl", [{"_id": "a", "text": "t", "date": date}])
    assert ingest_file(db, db.settings, path, progress=False).inserted == 1
    with db.connect() as conn:
        stored = conn.execute("SELECT document_date FROM medpg.documents").fetchone()
    assert stored is not None and stored[0] == datetime.fromisoformat(date)
