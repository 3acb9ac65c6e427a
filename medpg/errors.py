"""The errors medpg raises. Each message says what was wrong and, where it can, what to do.

The CLI prints them as one line and exits non-zero; the API turns them into a 4xx JSON body.
"""

from __future__ import annotations


class MedpgError(Exception):
    """Base class for every error medpg reports to a user."""

    exit_code = 1
    http_status = 400


class ConfigError(MedpgError):
    """A setting is missing, unknown or invalid."""

    exit_code = 2


class DatabaseError(MedpgError):
    """The database is unreachable, lacks pgvector, or its schema does not match."""

    exit_code = 3
    http_status = 503


class SchemaMismatchError(DatabaseError):
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
