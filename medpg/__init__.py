"""medpg: hybrid search for medical text in PostgreSQL (pgvector + BM25 + cross-encoder rerank).

``medpg.search(query, ...)`` is the search pipeline (``medpg.retrieval.search``), and
``medpg.Filters``, ``SearchResponse``, ``SearchResult``, ``Explanation`` and ``Evidence`` its types.
They are loaded on first use, so importing ``medpg`` (which every submodule import does) starts
no database driver and no numpy; neither loads a model or torch until a query is encoded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medpg.retrieval import Evidence, Explanation, Filters, SearchResponse, SearchResult, search

__all__ = ["Evidence", "Explanation", "Filters", "SearchResponse", "SearchResult", "search"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("medpg.retrieval"), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'medpg' has no attribute {name!r}")
