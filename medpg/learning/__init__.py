"""Learning from judgments: query adaptations trained against the stored document vectors.

``medpg learn`` (``medpg.learning.learn``) trains a residual linear adapter on the query encoder's
output from a BEIR qrels file or from feedback recorded through ``POST /feedback``, learns fusion
weights, and stores the result as a version in ``medpg.query_adaptations`` (``store``), active
only if it does not score lower on held-out judgments than what searches use now. Searches apply
the active adaptation (``active``), and so does the SQL function ``medpg.adapt_query_embedding``.
Importing this package loads no torch: only training needs it.
"""

from __future__ import annotations

from medpg.learning.active import ActiveAdaptation, fusion_weights, lookup
from medpg.learning.adapter import ResidualLinear
from medpg.learning.store import Adaptation, Switch, activate, deactivate, list_adaptations, rollback

__all__ = [
    "ActiveAdaptation",
    "Adaptation",
    "ResidualLinear",
    "Switch",
    "activate",
    "deactivate",
    "fusion_weights",
    "list_adaptations",
    "lookup",
    "rollback",
]
