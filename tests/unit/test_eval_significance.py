"""`medpg eval` against the default: paired t-test, Holm, wins/ties/losses, the table, the JSON, the PNG.

Hand-made runs whose answer is known: one relevant document per query, placed at a chosen rank.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from medpg.eval_plot import DPI, write_plot
from medpg.evaluation import EvalReport, SystemResult, compare_to_default, render_markdown
from medpg.significance import MetricComparison, compare_with_baseline, holm

N = 12
QRELS = {f"q{i}": {f"rel{i}": 1} for i in range(N)}
BASELINE = "hybrid weighted (bm25 + dense) (default)"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ranking(ranks: list[int | None]) -> dict[str, dict[str, float]]:
    """Query i's relevant document at rank ``ranks[i]`` (1-based; None: not retrieved) among 30 others."""
    run = {}
    for i, rank in enumerate(ranks):
        docs = [f"other{i}-{j}" for j in range(30)]
        if rank is not None:
            docs.insert(rank - 1, f"rel{i}")
        run[f"q{i}"] = {d: float(100 - pos) for pos, d in enumerate(docs)}
    return run


RUNS = {
    BASELINE: ranking([3] * N),  # nDCG@10 0.5 on every query
    "better": ranking([1 if i % 2 else 2 for i in range(N)]),  # higher on every query, by varying amounts
    "same": ranking([3] * N),
    "worse": ranking([20] * N),  # out of the top 10, inside the top 100: nDCG@10 0, Recall@100 unchanged
    "mixed": ranking([1 if i % 2 else 20 for i in range(N)]),  # +0.5 on half the queries, -0.5 on the rest
}


Comparisons = dict[str, dict[str, MetricComparison]]


@pytest.fixture(scope="module")
def comparisons() -> Comparisons:
    return compare_with_baseline(QRELS, RUNS, BASELINE)


def test_a_system_better_on_every_query_wins_every_query_with_a_small_p(comparisons: Comparisons) -> None:
    c = comparisons["better"]["ndcg@10"]
    assert (c.wins, c.ties, c.losses) == (N, 0, 0)
    assert c.delta > 0.3 and c.p_value is not None and c.p_value < 0.001
    assert c.p_holm is not None and c.p_holm >= c.p_value and c.significant


def test_an_identical_system_ties_every_query_with_p_one(comparisons: Comparisons) -> None:
    for metric in ("ndcg@10", "recall@100"):
        c = comparisons["same"][metric]
        assert (c.wins, c.ties, c.losses) == (0, N, 0)
        assert c.delta == 0.0 and c.p_value == 1.0 and c.p_holm == 1.0 and not c.significant


def test_a_worse_system_loses_on_ndcg_and_ties_on_recall(comparisons: Comparisons) -> None:
    ndcg, recall = comparisons["worse"]["ndcg@10"], comparisons["worse"]["recall@100"]
    assert (ndcg.wins, ndcg.ties, ndcg.losses) == (0, 0, N) and ndcg.delta == pytest.approx(-0.5)
    assert ndcg.significant
    assert (recall.wins, recall.ties, recall.losses) == (0, N, 0) and recall.p_value == 1.0


def test_wins_and_losses_that_cancel_are_not_significant(comparisons: Comparisons) -> None:
    c = comparisons["mixed"]["ndcg@10"]
    assert (c.wins, c.ties, c.losses) == (N // 2, 0, N // 2)
    assert c.p_value is not None and c.p_value > 0.05 and not c.significant
    # the baseline is not compared with itself
    assert set(comparisons) == {"better", "same", "worse", "mixed"}


def test_holm_adjusts_a_family_step_down() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, None, 0.9]) == [pytest.approx(0.4), None, pytest.approx(0.9)]  # None: not in the family
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_one_query_gives_no_test() -> None:
    qrels = {"q0": {"rel0": 1}}
    out = compare_with_baseline(qrels, {"base": ranking([3]), "other": ranking([1])}, "base")
    c = out["other"]["ndcg@10"]
    assert c.wins == 1 and c.p_value is None and c.p_holm is None and not c.significant


def report_for(runs: dict[str, dict[str, dict[str, float]]], compare: bool = True) -> EvalReport:
    """A report over RUNS scored by ranx, compared with the default as `medpg eval` does."""
    from ranx import Qrels, Run, evaluate

    systems = []
    for name, run in runs.items():
        m = evaluate(Qrels(QRELS), Run(run), ["ndcg@10", "mrr@10", "recall@100"])
        systems.append(SystemResult(name, m["ndcg@10"], m["mrr@10"], m["recall@100"], 1.0, 2.0))
    report = EvalReport(
        dataset="handmade",
        split="test",
        queries=N,
        documents=N * 31,
        chunks_embedded=N * 31,
        model="none",
        command="medpg eval handmade",
        machine="test",
        created_at="2026-01-01T00:00:00+00:00",
        settings={},
        systems=systems,
    )
    if compare:
        compare_to_default(report, QRELS, runs, BASELINE)
    return report


def test_the_table_and_the_json_carry_the_comparison() -> None:
    report = report_for(RUNS)
    md = render_markdown(report, plot="handmade_test_eval.png")
    header = next(line for line in md.splitlines() if line.startswith("| system |"))
    assert header.startswith("| system | nDCG@10 | MRR@10 | Recall@100 | p50 ms | p95 ms |")  # kept
    for column in ("Δ nDCG@10", "p nDCG@10", "W/T/L nDCG@10", "Δ Recall@100", "p Recall@100"):
        assert f"| {column} |" in header + " "
    row = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| +0." in row["better"] and " * |" in row["better"] and f"| {N}/0/0 |" in row["better"]
    assert "| +0.0000 | 1.0000 | 0/12/0 | +0.0000 | 1.0000 |" in row["same"]
    assert row[BASELINE].endswith("| — | — | — | — | — |")
    assert "Holm" in md and "t-test" in md and "![nDCG@10 and Recall@100" in md
    assert "(handmade_test_eval.png)" in md

    data = json.loads(report.to_json())
    assert data["significance"]["baseline"] == BASELINE and data["significance"]["alpha"] == 0.05
    by_name = {s["name"]: s for s in data["systems"]}
    assert by_name[BASELINE]["vs_default"] is None
    better = by_name["better"]
    for key in ("name", "ndcg10", "mrr10", "recall100", "p50_ms", "p95_ms", "latency_note", "settings"):
        assert key in better  # the keys benchmarks read are still there
    nd = better["vs_default"]["ndcg@10"]
    assert nd["wins"] == N and nd["losses"] == 0 and nd["significant"] is True
    assert set(nd) == {"delta", "p_value", "p_holm", "significant", "wins", "ties", "losses"}
    assert math.isclose(nd["delta"], better["ndcg10"] - by_name[BASELINE]["ndcg10"], abs_tol=1e-12)
    assert set(better["vs_default"]) == {"ndcg@10", "recall@100"}


def test_without_the_default_there_is_no_comparison() -> None:
    report = report_for({"better": RUNS["better"]}, compare=False)
    md = render_markdown(report)
    assert "not computed" in md and "| — | — | — | — | — |" in md and "![" not in md


def test_the_plot_is_a_png_of_the_expected_size(tmp_path: Path) -> None:
    import matplotlib.image

    report = report_for(RUNS)
    path = write_plot(report, tmp_path / "sub" / "handmade_test_eval.png")
    assert path == tmp_path / "sub" / "handmade_test_eval.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert (width, height) == (round(11 * DPI), round((1.6 + 0.42 * len(RUNS)) * DPI))
    assert pixels.std() > 0.05  # something was drawn


def test_importing_the_evaluation_and_the_cli_does_not_import_matplotlib() -> None:
    code = (
        "import sys, medpg.evaluation, medpg.eval_plot, medpg.significance, medpg.cli, medpg.cli.search; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
