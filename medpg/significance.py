"""Is a difference between two retrieval systems real? Paired tests against a baseline, query by query.

``ranx.compare`` scores every system on every judged query and runs a paired test between each pair;
medpg keeps the pairs with the baseline (the default hybrid), corrects their p-values for the number
of systems compared (Holm, one family per metric) and counts the queries each system wins, ties and
loses against the baseline.

The test is the two-sided paired Student's t-test. ranx's other paired test, Fisher's randomization
test, gives no reproducible p-values: its numba kernel seeds only the calling thread, so the same
runs gave p = 0.0082 to 0.0113 across calls at 10,000 permutations; its kernel also compiles for
7-20 s on a fresh install. On IR metrics the two tests agree closely (Smucker et al., CIKM 2007),
and the t-test answers the same for the same runs, which committed results and tests need.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
COMPARED_METRICS = ("ndcg@10", "recall@100")
TEST = "two-sided paired Student's t-test (ranx.compare)"
CORRECTION = "Holm"
NO_RESULT = "__no_result__"  # the document id of an empty result: ranx needs every judged query in a run

Ranking = dict[str, dict[str, float]]  # query id -> document id -> score


@dataclass(frozen=True)
class MetricComparison:
    """One system against the baseline on one metric, over the same queries.

    ``delta`` is the system's mean minus the baseline's; ``p_value`` the paired test's, ``p_holm``
    that p-value after Holm's correction over every system compared with the baseline (None when
    the test is undefined: fewer than two queries); ``significant`` is ``p_holm <= alpha``.
    ``wins`` / ``ties`` / ``losses``: queries where the system scores higher than / the same as /
    lower than the baseline.
    """

    delta: float
    p_value: float | None
    p_holm: float | None
    significant: bool
    wins: int
    ties: int
    losses: int


def filled_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> Ranking:
    """``run`` with every judged query: a query with no results gets one unjudged document (scores 0)."""
    return {q: dict(run.get(q) or {NO_RESULT: 0.0}) for q in qrels}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: no test, left out of the family).

    The i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: it controls
    the chance of any false positive in the family at alpha, like Bonferroni, and rejects at least
    as much.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def compare_with_baseline(
    qrels: Mapping[str, Mapping[str, int]],
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    baseline: str,
    *,
    metrics: Sequence[str] = COMPARED_METRICS,
    alpha: float = ALPHA,
) -> dict[str, dict[str, MetricComparison]]:
    """Every run in ``runs`` (by system name) except ``baseline`` against it: metric -> comparison."""
    from ranx import Qrels, Run, compare

    from medpg.dependency_warnings import ranx_compiling_quietly

    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not among the runs")
    others = [name for name in runs if name != baseline]
    if not others:
        return {}
    ranx_runs = [Run(filled_run(qrels, runs[name]), name=name) for name in [baseline, *others]]
    with ranx_compiling_quietly(), warnings.catch_warnings():
        # Identical per-query scores (a system equal to the baseline) make scipy divide zero by zero
        # and warn; that p-value is NaN and read as 1 below.
        warnings.simplefilter("ignore", RuntimeWarning)
        report = compare(
            Qrels({q: dict(judged) for q, judged in qrels.items()}),
            ranx_runs,
            list(metrics),
            stat_test="student",
            max_p=alpha,
            make_comparable=True,
        )
    raw: dict[str, dict[str, dict[str, Any]]] = {}
    for name in others:
        pair = report.comparisons[frozenset((baseline, name))]
        raw[name] = {}
        for m in metrics:
            wtl = report.win_tie_loss[(name, baseline)][m]
            raw[name][m] = {
                "delta": float(report.results[name][m]) - float(report.results[baseline][m]),
                "p": _p_value(pair[m]["p_value"], wtl),
                "wtl": wtl,
            }
    out: dict[str, dict[str, MetricComparison]] = {name: {} for name in others}
    for m in metrics:
        adjusted = holm([raw[name][m]["p"] for name in others])
        for name, p_holm in zip(others, adjusted, strict=True):
            r = raw[name][m]
            out[name][m] = MetricComparison(
                delta=r["delta"],
                p_value=r["p"],
                p_holm=p_holm,
                significant=p_holm is not None and p_holm <= alpha,
                wins=r["wtl"]["W"],
                ties=r["wtl"]["T"],
                losses=r["wtl"]["L"],
            )
    return out


def _p_value(p: Any, wins_ties_losses: Mapping[str, int]) -> float | None:
    """ranx's p-value, or 1 for a system that ties the baseline on every query (scipy's NaN)."""
    p = float(p)
    if not math.isnan(p):
        return p
    if wins_ties_losses["W"] == wins_ties_losses["L"] == 0:
        return 1.0
    return None  # fewer than two queries: no test


def describe(baseline: str, compared: int, queries: int, alpha: float = ALPHA) -> dict[str, Any]:
    """How the comparisons were made, for the report."""
    return {
        "baseline": baseline,
        "test": TEST,
        "metrics": list(COMPARED_METRICS),
        "alpha": alpha,
        "correction": f"{CORRECTION} over the {compared} systems compared with the baseline, per metric",
        "queries": queries,
    }


__all__ = [
    "ALPHA",
    "COMPARED_METRICS",
    "MetricComparison",
    "compare_with_baseline",
    "describe",
    "filled_run",
    "holm",
]
