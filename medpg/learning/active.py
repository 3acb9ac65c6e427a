"""Which query adaptation a search uses, looked up on every search and cached per process.

``medpg.active_query_adaptation()`` (SQL) decides, under the caller's role and scope, exactly as
it does for ``medpg.adapt_query_embedding``: the tenant's active adaptation, else the one for every
tenant, trained on the stored vectors search uses now. The lookup is one small indexed SELECT in
the search's own transaction (well under a millisecond), so a switch or a rollback takes effect
on the next search of every process, with no time-to-live to wait out. The parameters are read
once per process per adaptation (keyed by database, id and creation time) and never change.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from medpg.config import Settings
from medpg.learning.adapter import ResidualLinear
from medpg.learning.store import load_adapter

if TYPE_CHECKING:
    from medpg.db.engine import Database

log = logging.getLogger(__name__)

#: Settings that, set by the user, win over an adaptation's learned fusion weights.
WEIGHT_SETTINGS = frozenset({"dense_weight", "lexical_weight"})

_LOOKUP = """
SELECT id, created_at, query_model, dense_weight, lexical_weight FROM medpg.active_query_adaptation()
"""

_adapters: weakref.WeakKeyDictionary[Database, dict[tuple[int, datetime], ResidualLinear]] = (
    weakref.WeakKeyDictionary()
)
_warned: set[tuple[int, str]] = set()  # (adaptation, query model) said once per process
_lock = threading.Lock()


@dataclass(frozen=True)
class ActiveAdaptation:
    """The adaptation a search applies: its id, the query model it was trained for, its fusion
    weights and its parameters."""

    id: int
    query_model: str
    dense_weight: float
    lexical_weight: float
    adapter: ResidualLinear

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return self.adapter.apply(vectors)


def lookup(
    conn: psycopg.Connection[Any], db: Database, query_model: str | None = None
) -> ActiveAdaptation | None:
    """The adaptation that applies on ``conn`` (its role and scope), or None.

    ``query_model``: the identity of the query encoder in use; an adaptation trained for another
    one does not apply (it would map the wrong vectors).
    """
    row = conn.execute(_LOOKUP).fetchone()
    if row is None:
        return None
    adaptation_id, created_at, trained_for, dense_weight, lexical_weight = row
    if query_model is not None and trained_for != query_model:
        if (adaptation_id, query_model) not in _warned:
            _warned.add((adaptation_id, query_model))
            log.warning(
                "query adaptation %d was trained for the query encoder %s, not %s: it is not applied",
                adaptation_id,
                trained_for,
                query_model,
            )
        return None
    key = (int(adaptation_id), created_at)
    with _lock:
        cached = _adapters.setdefault(db, {}).get(key)
    if cached is None:
        cached = load_adapter(conn, int(adaptation_id))
        with _lock:
            _adapters[db][key] = cached
    return ActiveAdaptation(
        int(adaptation_id), trained_for, float(dense_weight), float(lexical_weight), cached
    )


def fusion_weights(settings: Settings, adaptation: ActiveAdaptation | None) -> tuple[float, float]:
    """(dense, lexical) weights: the user's when set (MEDPG_DENSE_WEIGHT / MEDPG_LEXICAL_WEIGHT,
    medpg.toml, arguments), else the active adaptation's learned ones, else the defaults."""
    if adaptation is None or WEIGHT_SETTINGS & settings.explicit_fields:
        return settings.dense_weight, settings.lexical_weight
    return adaptation.dense_weight, adaptation.lexical_weight


def clear_cache() -> None:
    """Forget loaded adaptation parameters (tests)."""
    with _lock:
        _adapters.clear()


__all__ = ["WEIGHT_SETTINGS", "ActiveAdaptation", "clear_cache", "fusion_weights", "lookup"]
