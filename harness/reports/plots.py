"""PNG plots of report rows: accuracy by turn, and the four transitions between turn 1 and the last.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot: no display, no
global figure state, so plotting works on a headless server and inside tests.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.reports.rows import TASK_TITLES, Row
from harness.stats import TRANSITION_LABELS, TRANSITIONS, transition_shares

TRANSITION_COLORS = {"c2c": "#4c9a5b", "i2c": "#9fd39a", "c2i": "#e8847a", "i2i": "#b9b9b9"}


def accuracy_figure(rows: Sequence[Row]) -> Figure:
    """Accuracy at each turn, one line per row and one panel per task, so the paper's MATH rows are
    never drawn among HumanEval runs; measured rows with their 95% intervals as error bars,
    published rows dashed, so a reader never mistakes a copied number for a measured one."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    fig = Figure(figsize=(6.4 if len(tasks) == 1 else 4.8 * len(tasks), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        _accuracy_panel(ax, [r for r in rows if r.task == task])
        ax.set_title(
            "Accuracy by turn (bars: 95% bootstrap interval)"
            if len(tasks) == 1
            else f"{TASK_TITLES.get(task, task)}: accuracy by turn"
        )
    axes[0].set_ylabel("accuracy (% of episodes)")
    if len(tasks) > 1:
        fig.suptitle("Accuracy by turn (bars: 95% bootstrap interval)", fontsize="medium")
    fig.tight_layout()
    return fig


def _accuracy_panel(ax, rows: Sequence[Row]) -> None:
    max_turns = max(r.turns for r in rows)
    for i, row in enumerate(rows):
        turns = list(range(1, row.turns + 1))
        # Nudge each row sideways so intervals at the same turn do not hide one another.
        xs = [t + 0.04 * (i - (len(rows) - 1) / 2) for t in turns]
        acc = [100 * row.metrics[f"acc_t{t}"] for t in turns]
        if row.published:
            ax.plot(xs, acc, linestyle="--", marker="x", label=row.label)
            continue
        errors = None
        if all(f"acc_t{t}" in row.ci95 for t in turns):
            errors = [
                [a - 100 * row.ci95[f"acc_t{t}"][0] for a, t in zip(acc, turns)],
                [100 * row.ci95[f"acc_t{t}"][1] - a for a, t in zip(acc, turns)],
            ]
        ax.errorbar(xs, acc, yerr=errors, marker="o", capsize=4, label=row.label)
    ax.set_xticks(range(1, max_turns + 1), [f"t{t}" for t in range(1, max_turns + 1)])
    ax.set_xlim(0.7, max_turns + 0.3)
    ax.set_ylim(0, 100)
    ax.set_xlabel("turn")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def row_transitions(row: Row) -> dict[str, float]:
    """Shares of the four transitions between turn 1 and the row's last turn."""
    k = row.turns
    return transition_shares(
        row.metrics["acc_t1"], row.metrics[f"delta_i2c_t1_t{k}"], row.metrics[f"delta_c2i_t1_t{k}"]
    )


def transitions_figure(rows: Sequence[Row]) -> Figure:
    """One stacked bar per row: right→right, wrong→right, right→wrong, wrong→wrong, in % of episodes.

    Rows of a single turn have no transition and are left out.
    """
    rows = [r for r in rows if r.turns >= 2]
    fig = Figure(figsize=(max(4.0, 1.3 * len(rows) + 2.5), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, "no run has two turns", ha="center", va="center", transform=ax.transAxes)
    # Bars stand at positions, not at their labels, so rows that share a label never stack on one another.
    positions = list(range(len(rows)))
    shares = [row_transitions(r) for r in rows]
    bottom = [0.0] * len(rows)
    for name in TRANSITIONS:
        heights = [100 * s[name] for s in shares]
        bars = ax.bar(positions, heights, bottom=bottom, color=TRANSITION_COLORS[name], label=TRANSITION_LABELS[name])
        for bar, h, row in zip(bars, heights, rows):
            if row.published:
                bar.set_hatch("//")
                bar.set_edgecolor("white")
            if h >= 4:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + h / 2, f"{h:.1f}", ha="center", va="center",
                        fontsize="x-small")  # fmt: skip
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(positions, [r.label.replace(" (published", "\n(published") for r in rows])
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of episodes")
    ax.set_title("Turn 1 → last turn")
    ax.tick_params(axis="x", labelsize="small")
    if rows:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
