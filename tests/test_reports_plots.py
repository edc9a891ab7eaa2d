"""Plots: what each figure draws, read back from the matplotlib objects."""

from __future__ import annotations

import pytest

from harness.reports.compare import published_rows
from harness.reports.plots import accuracy_figure, png_bytes, save_png, transitions_figure
from harness.reports.rows import Row

# 6 episodes: Acc@t1 3/6, Acc@t2 2/6, Δi→c 1/6, Δc→i 2/6 -> right→right 1/6, wrong→wrong 2/6.
MEASURED = Row(
    run="base",
    model="m",
    task="math",
    turns=2,
    n=6,
    metrics={
        "acc_t1": 3 / 6,
        "acc_t2": 2 / 6,
        "delta_t1_t2": -1 / 6,
        "delta_i2c_t1_t2": 1 / 6,
        "delta_c2i_t1_t2": 2 / 6,
    },
    ci95={"acc_t1": [1 / 6, 5 / 6], "acc_t2": [0.0, 4 / 6]},
)


def test_accuracy_plot_draws_one_line_per_row_through_the_accuracies():
    fig = accuracy_figure([MEASURED, *published_rows(["math"])])
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == ["Base model (published, MATH)", "SCoRe (published, MATH)"]
    assert list(lines["SCoRe (published, MATH)"].get_ydata()) == pytest.approx([60.0, 64.4])
    assert lines["SCoRe (published, MATH)"].get_linestyle() == "--"
    # matplotlib lists plain lines before error-bar containers in the legend.
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "Base model (published, MATH)",
        "SCoRe (published, MATH)",
        "base",
    ]
    measured = next(c for c in ax.containers if c.get_label() == "base")
    assert list(measured.lines[0].get_ydata()) == pytest.approx([50.0, 100 * 2 / 6])
    # Its error bars span the 95% interval: at t1 from 1/6 to 5/6.
    segments = measured.lines[2][0].get_segments()
    assert [round(y, 1) for y in (segments[0][0][1], segments[0][1][1])] == [16.7, 83.3]


def test_transition_bars_stack_to_the_four_shares_of_each_row():
    fig = transitions_figure([MEASURED, published_rows(["math"])[0]])
    ax = fig.axes[0]
    # Bars are drawn transition by transition, each over both rows.
    heights = [round(p.get_height(), 1) for p in ax.patches]
    assert heights == [16.7, 36.8, 16.7, 4.6, 33.3, 15.8, 33.3, 42.8]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "right→right",
        "wrong→right",
        "right→wrong",
        "wrong→wrong",
    ]
    # Published bars are hatched; measured ones are not.
    assert [bool(p.get_hatch()) for p in ax.patches[:2]] == [False, True]


def test_figures_save_as_png(tmp_path):
    path = tmp_path / "sub" / "a.png"
    save_png(accuracy_figure([MEASURED]), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_bytes(transitions_figure([MEASURED]))[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_turn_rows_have_no_transition_bar():
    one_turn = Row(run="t1only", model="m", task="math", turns=1, metrics={"acc_t1": 0.5})
    ax = transitions_figure([one_turn, MEASURED]).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base"]
    assert [t.get_text() for t in transitions_figure([one_turn]).axes[0].texts] == ["no run has two turns"]


def test_each_task_gets_its_own_accuracy_panel_with_only_its_paper_rows():
    code = Row(run="code-run", model="m", task="humaneval", turns=2, metrics=MEASURED.metrics)
    rows = [MEASURED, *published_rows(["math"]), code, *published_rows(["humaneval"])]
    fig = accuracy_figure(rows)
    assert [ax.get_title() for ax in fig.axes] == ["MATH: accuracy by turn", "HumanEval: accuracy by turn"]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [
        ["Base model (published, MATH)", "SCoRe (published, MATH)", "base"],
        ["Base model (published, HumanEval)", "SCoRe (published, HumanEval)", "code-run"],
    ]


def test_rows_of_the_same_name_get_bars_of_their_own():
    fig = transitions_figure([MEASURED, *published_rows(["math"]), *published_rows(["humaneval"])])
    ax = fig.axes[0]
    assert len({round(p.get_x(), 3) for p in ax.patches}) == 5
    assert [t.get_text() for t in ax.get_xticklabels()][1::2] == [
        "Base model\n(published, MATH)", "Base model\n(published, HumanEval)",
    ]  # fmt: skip
