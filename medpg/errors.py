"""The errors medpg raises. Each message says what was wrong and, where it can, what to do.

The CLI prints them as one line and exits non-zero; the API maps ``http_status`` to its response.
Each class also says whether trying again later can help (``transient``); ``is_transient`` is the
one definition of that, shared by the CLI, the embedder and the Celery tasks.
"""

from __future__ import annotations

import sys


class MedpgError(Exception):
    """Base class for every error medpg reports to a user."""

    exit_code = 1
    http_status = 400
    #: True when the same call may succeed later unchanged (a server restarting, a network blip).
    transient = False


class ConfigError(MedpgError):
    """A setting is missing, unknown or invalid (including a bad MEDPG_DATABASE_URL).

    It is the server's own configuration, so the API reports it as a server error.
    """

    exit_code = 2
    http_status = 500


class BackendUnavailableError(ConfigError):
    """An optional backend this server lacks (the pg_textsearch lexical backend), chosen by a setting.

    Chosen by a caller's argument instead, search reports it as an InputError naming the argument.
    """


class DatabaseError(MedpgError):
    """Base of database problems: unreachable, lacking pgvector, or a schema that does not fit."""

    exit_code = 3
    http_status = 503


class DatabaseUnavailableError(DatabaseError):
    """PostgreSQL cannot be reached or went away; trying again later may succeed."""

    transient = True


class SchemaError(DatabaseError):
    """The schema is missing, damaged or at another revision; `medpg db upgrade` or an operator must act."""


class SchemaMismatchError(SchemaError):
    """The database schema disagrees with the configuration (e.g. vector dimension)."""

    http_status = 409


class InputError(MedpgError):
    """Bad input: a file, a line or a field that cannot be ingested or parsed."""

    exit_code = 4
    http_status = 422


class ModelNotAvailableError(MedpgError):
    """A configured model cannot be loaded; the message says how to get it."""

    exit_code = 5
    http_status = 503


class NotFoundError(MedpgError):
    """A document, patient or job that does not exist."""

    http_status = 404


class AuthenticationError(MedpgError):
    """No API key, an unknown one or a revoked one (HTTP 401)."""

    exit_code = 6
    http_status = 401


class PermissionDeniedError(MedpgError):
    """A valid key without the scope, tenant or patient a request needs (HTTP 403)."""

    exit_code = 6
    http_status = 403


class PayloadTooLargeError(InputError):
    """A request body over MEDPG_API_MAX_BODY_BYTES (HTTP 413)."""

    http_status = 413


def _psycopg_transient(exc: BaseException) -> bool | None:
    """Whether a psycopg error is transient; None if ``exc`` is not one (psycopg not imported)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    errors = psycopg.errors
    # Errors that say the statement or the schema is wrong stay wrong however often they run.
    permanent = (
        errors.UndefinedFunction,
        errors.UndefinedTable,
        errors.UndefinedColumn,
        errors.UndefinedObject,
        errors.InvalidSchemaName,
        errors.InvalidParameterValue,
        psycopg.DataError,
        psycopg.ProgrammingError,
        psycopg.IntegrityError,
    )
    if isinstance(exc, permanent):
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _sqlalchemy_cause(exc: BaseException) -> BaseException | None:
    """The driver error a SQLAlchemy DBAPIError wraps, if ``exc`` is one."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        orig: BaseException | None = exc.orig
        return orig
    return None


def _kombu_transient(exc: BaseException) -> bool:
    kombu_exceptions = sys.modules.get("kombu.exceptions")
    return kombu_exceptions is not None and isinstance(exc, kombu_exceptions.OperationalError)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` means "unavailable for now": retrying the same work later may succeed.

    Transient: MedpgError classes with ``transient = True``, psycopg connection-level errors
    (OperationalError, InterfaceError) other than those meaning a bad statement or a missing
    schema (also when SQLAlchemy wraps them), broker connection errors (kombu OperationalError),
    ConnectionError and TimeoutError.
    Everything else (configuration, schema, input, missing models, programming errors) is permanent.
    psycopg and kombu are looked up only if already imported: an error of theirs implies they are.
    """
    if isinstance(exc, MedpgError):
        return exc.transient
    cause = _sqlalchemy_cause(exc)
    if cause is not None:
        return is_transient(cause)
    from_psycopg = _psycopg_transient(exc)
    if from_psycopg is not None:
        return from_psycopg
    if _kombu_transient(exc):
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "InputError",
    "MedpgError",
    "ModelNotAvailableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "SchemaError",
    "SchemaMismatchError",
    "is_transient",
]
