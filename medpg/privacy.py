"""The one rule for document and query text in messages and logs: none, unless MEDPG_LOG_TEXT is on.

Documents are clinical notes and queries name conditions and patients, so errors and logs name the
file, line, field or argument and the kind of problem. An operator who turns ``MEDPG_LOG_TEXT`` on
(``settings.log_text``) gets short excerpts: ``excerpt`` for ingest messages, ``shown`` for query
text and server messages that may quote values.
"""

from __future__ import annotations

EXCERPT_CHARS = 20
HIDDEN = "<text hidden; set MEDPG_LOG_TEXT=1 to show>"


def excerpt(value: str, log_text: bool) -> str:
    """``" (starts 'Patient John Smit')"`` when ``log_text``, else ``""``: append it to a message."""
    if not log_text:
        return ""
    return f" (starts {value[:EXCERPT_CHARS]!r})"


def shown(text: str, *, log_text: bool, limit: int = 80) -> str:
    """``text`` (quoted, cut to ``limit``) when ``log_text`` allows it, else a placeholder."""
    if not log_text:
        return HIDDEN
    return ascii(text[:limit] + ("…" if len(text) > limit else ""))


__all__ = ["EXCERPT_CHARS", "HIDDEN", "excerpt", "shown"]
