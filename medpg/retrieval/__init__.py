"""Search: retrieval and fusion run in PostgreSQL (``medpg.hybrid_search``); Python encodes the
query, reranks with the cross-encoder and explains each result.

``from medpg.search import search`` — or call the package itself, ``medpg.search(...)``.
Importing this package loads no model and no torch.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from medpg.search.pipeline import search
from medpg.search.types import Evidence, Explanation, Filters, SearchResponse, SearchResult


class _CallableModule(ModuleType):
    """Lets ``medpg.search(query, ...)`` work although ``medpg.search`` is a package."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResponse:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Evidence", "Explanation", "Filters", "SearchResponse", "SearchResult", "search"]
