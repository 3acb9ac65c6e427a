"""The PNG beside `medpg eval`'s table: each system's nDCG@10 and Recall@100, the default highlighted.

matplotlib is imported inside ``write_plot`` only, and drawn with the Agg canvas directly (no pyplot,
no global backend switch), so importing medpg or running a command that writes no plot never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medpg.evaluation import EvalReport

DEFAULT_COLOR = "#d95f02"
OTHER_COLOR = "#7f9fbf"
DPI = 110


def write_plot(report: EvalReport, path: Path) -> Path:
    """Two panels of horizontal bars (nDCG@10, Recall@100), one bar per system in table order.

    The default system's bars are orange with a dashed line at its value across the panel; a bar
    whose difference from the default is significant (``vs_default[...].significant``) carries
    ``*`` after its value and a hatch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    systems = list(reversed(report.systems))  # barh draws bottom-up; the table reads top-down
    names = [s.name for s in systems]
    fig = Figure(figsize=(11, 1.6 + 0.42 * len(systems)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("nDCG@10", "ndcg@10", "ndcg10"), ("Recall@100", "recall@100", "recall100"))
    for ax, (label, metric, attr) in zip(axes, panels, strict=True):
        values = [float(getattr(s, attr)) for s in systems]
        significant = [bool(s.vs_default and s.vs_default[metric].significant) for s in systems]
        colors = [DEFAULT_COLOR if _is_default(report, s.name) else OTHER_COLOR for s in systems]
        bars = ax.barh(range(len(systems)), values, color=colors, edgecolor="#333333", linewidth=0.6)
        for bar, sig in zip(bars, significant, strict=True):
            if sig:
                bar.set_hatch("//")
        top = max(values, default=0.0)
        for y, (value, sig) in enumerate(zip(values, significant, strict=True)):
            ax.text(value + top * 0.01, y, f"{value:.4f}{' *' if sig else ''}", va="center", fontsize=8)
        base = next((v for v, s in zip(values, systems, strict=True) if _is_default(report, s.name)), None)
        if base is not None:
            ax.axvline(base, color=DEFAULT_COLOR, linestyle="--", linewidth=1)
        ax.set_xlim(0, max(top * 1.18, 0.05))
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(systems)), names, fontsize=8)
    for tick, name in zip(axes[0].get_yticklabels(), names, strict=True):
        if _is_default(report, name):
            tick.set_fontweight("bold")
            tick.set_color(DEFAULT_COLOR)
    fig.suptitle(f"medpg eval: {report.dataset} ({report.split}, {report.queries} queries)", fontsize=11)
    how = report.significance
    note = (
        f"orange: the default; * and hatched: differs from the default at p ≤ {how['alpha']} "
        f"({how['test'].split(' (')[0]}, {how['correction'].split(' over')[0]}-adjusted)"
        if how
        else "no significance tests: the default system was not run"
    )
    fig.supxlabel(note, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _is_default(report: EvalReport, name: str) -> bool:
    if report.significance is not None:
        return name == report.significance["baseline"]
    return name.endswith("(default)")


__all__ = ["write_plot"]
