"""The one rule for document text in ingest messages: none, unless MEDPG_LOG_TEXT allows an excerpt.

Errors and logs name the file, the line, the field and the kind of problem. Files hold clinical
notes, so a value is shown only when the operator turned MEDPG_LOG_TEXT on, and then only its
first EXCERPT_CHARS characters.
"""

from __future__ import annotations

EXCERPT_CHARS = 20


def excerpt(value: str, log_text: bool) -> str:
    """``" (starts 'Patient John Smit')"`` when ``log_text``, else ``""``: append it to a message."""
    if not log_text:
        return ""
    return f" (starts {value[:EXCERPT_CHARS]!r})"


__all__ = ["EXCERPT_CHARS", "excerpt"]
