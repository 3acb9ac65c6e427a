"""Retrieval: ranking and fusion run in PostgreSQL (``medpg.hybrid_search``); Python encodes the
query, reranks with the cross-encoder and explains each result.

``from medpg.retrieval import search, Filters``; ``medpg.search`` is the same function.
Importing this package loads no model and no torch.
"""

from __future__ import annotations

from medpg.retrieval.pipeline import search
from medpg.retrieval.types import Evidence, Explanation, Filters, SearchResponse, SearchResult

__all__ = ["Evidence", "Explanation", "Filters", "SearchResponse", "SearchResult", "search"]
