"""medpg: hybrid search for medical text in PostgreSQL (pgvector + BM25 + cross-encoder rerank).

Importing ``medpg`` does nothing else: ``medpg.search(query, ...)`` imports the search package on
first use (still no model or torch until a query is encoded).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["search"]


def __getattr__(name: str) -> Any:
    if name == "search":
        return importlib.import_module("medpg.search")
    raise AttributeError(f"module 'medpg' has no attribute {name!r}")
