"""Error classes say what kind of failure they are; is_transient is the one definition of retryable."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import kombu.exceptions
import psycopg
import pytest
import sqlalchemy.exc
import typer

from medpg.cli.common import handle_errors
from medpg.config import Settings
from medpg.db.engine import Database
from medpg.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    InputError,
    MedpgError,
    ModelNotAvailableError,
    NotFoundError,
    SchemaError,
    SchemaMismatchError,
    is_transient,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("cls", "transient", "http_status", "exit_code"),
    [
        (ConfigError, False, 500, 2),
        (DatabaseError, False, 503, 3),
        (DatabaseUnavailableError, True, 503, 3),
        (SchemaError, False, 503, 3),
        (SchemaMismatchError, False, 409, 3),
        (InputError, False, 422, 4),
        (ModelNotAvailableError, False, 503, 5),
        (NotFoundError, False, 404, 1),
    ],
)
def test_each_class_says_its_kind(
    cls: type[MedpgError], transient: bool, http_status: int, exit_code: int
) -> None:
    assert (cls.transient, cls.http_status, cls.exit_code) == (transient, http_status, exit_code)
    assert is_transient(cls("x")) is transient
    assert issubclass(cls, MedpgError)


def test_database_classes_keep_their_bases() -> None:
    assert issubclass(DatabaseUnavailableError, DatabaseError)
    assert issubclass(SchemaMismatchError, SchemaError) and issubclass(SchemaError, DatabaseError)


def _sa(orig: BaseException) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.InterfaceError("connection already closed"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.UndefinedFunction("no such function"), False),
        (psycopg.errors.UndefinedTable("no such table"), False),
        (psycopg.errors.InvalidParameterValue("bad value"), False),
        (psycopg.DataError("bad data"), False),
        (psycopg.errors.UniqueViolation("duplicate"), False),
        (kombu.exceptions.OperationalError("broker down"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (ValueError("bad"), False),
        (RuntimeError("bug"), False),
        (KeyError("x"), False),
        (_sa(psycopg.OperationalError("server closed the connection")), True),
        (_sa(psycopg.errors.UndefinedTable("no such table")), False),
    ],
)
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


def test_importing_errors_imports_no_driver() -> None:
    code = (
        "import sys, medpg.errors as e; assert e.is_transient(ConnectionError()); "
        "assert not {'psycopg', 'kombu', 'sqlalchemy'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_bad_database_url_is_a_configuration_error(tmp_path: Path) -> None:
    for url in ("mysql://u@h/db", "postgresql://u@h:notaport/db"):
        db = Database(Settings(_env_file=None, database_url=url, data_dir=tmp_path))  # type: ignore[call-arg]
        with pytest.raises(ConfigError, match="MEDPG_DATABASE_URL"):
            _ = db.url


def test_unreachable_database_is_transient(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="postgresql://medpg@127.0.0.1:1/medpg?connect_timeout=2",
        data_dir=tmp_path,
    )
    db = Database(settings)
    with pytest.raises(DatabaseUnavailableError, match="cannot reach PostgreSQL") as err, db.connect():
        pass
    assert is_transient(err.value)
    db.dispose()


@pytest.mark.parametrize(
    ("error", "hint"),
    [(DatabaseUnavailableError("cannot reach PostgreSQL"), True), (SchemaError("no medpg schema"), False)],
)
def test_cli_prints_one_line_and_says_when_to_try_again(
    error: MedpgError, hint: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    @handle_errors
    def command() -> None:
        raise error

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == error.exit_code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert ("(transient: try again)" in lines[0]) is hint


# --- the Celery task's retry decision (workers.tasks.retry_or_fail) --------------------------------


class FakeRequest:
    def __init__(self, retries: int) -> None:
        self.retries = retries


class FakeTask:
    """The part of a bound Celery task that retry_or_fail uses."""

    def __init__(self, retries: int) -> None:
        self.request = FakeRequest(retries)
        self.retried: list[dict[str, Any]] = []

    def retry(self, **kwargs: Any) -> Exception:
        self.retried.append(kwargs)
        return RuntimeError("retry scheduled")


def test_transient_error_is_retried_with_exponential_backoff() -> None:
    from workers.tasks import retry_or_fail

    for retries in range(8):
        task = FakeTask(retries)
        exc = psycopg.OperationalError("server closed the connection")
        raised = retry_or_fail(task, exc, "embedding chunks [1]", backoff_max=300)  # type: ignore[arg-type]
        assert str(raised) == "retry scheduled"
        (call,) = task.retried
        assert call["exc"] is exc and 0 <= call["countdown"] <= min(300, 2**retries)


def test_permanent_error_is_recorded_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    from workers.tasks import PermanentTaskError, retry_or_fail

    task = FakeTask(0)
    secret = "patient note text"
    with caplog.at_level(logging.ERROR, logger="workers.tasks"):
        raised = retry_or_fail(
            task,  # type: ignore[arg-type]
            psycopg.DataError(f"invalid input: {secret}"),
            "embedding chunks [7, 8]",
            backoff_max=300,
        )
    assert task.retried == []
    assert isinstance(raised, PermanentTaskError) and not is_transient(raised)
    assert "DataError" in str(raised) and secret not in str(raised)
    assert "failed permanently" in caplog.text and "[7, 8]" in caplog.text and "DataError" in caplog.text
    assert secret not in caplog.text
    # A medpg error's own message (which never quotes text) is kept: it says what to fix.
    raised = retry_or_fail(task, SchemaMismatchError("dimension 384 vs 32"), "x", backoff_max=1)  # type: ignore[arg-type]
    assert "dimension 384 vs 32" in str(raised) and task.retried == []
