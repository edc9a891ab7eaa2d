"""Report rows: one shape for every line of every report table, and the cells they print as.

A row is a measured run, a published row of the SCoRe paper, or one group of a run (a MATH subject,
a level, a code problem). Run rows take their numbers from summary.json as the run wrote them;
group rows run `harness.metrics.summarize` on the group's episodes, so every number in every table
is the same metric with the same interval. The cross-run report (compare.py), the plots and the
per-run page (html.py) all build on this module, which imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.metrics import Graded, metric_names, summarize, turn_pairs
from harness.reports.runs import RunData
from harness.reports.summary import metric_label
from harness.stats import group_by, mcnemar_exact

# Which breakdowns a run's samples allow: MATH records keep subject and level; records without
# either (code tasks) are broken down by problem.
BREAKDOWN_FIELDS = ("subject", "level")
# How the paper and the reports write the task names it has rows for.
TASK_TITLES = {"math": "MATH", "humaneval": "HumanEval"}
BREAKDOWN_TITLES = {"subject": "subject", "level": "level", "id": "problem"}


@dataclass
class Row:
    """One line of a report table; metrics and intervals are fractions, keyed by metric name."""

    run: str
    model: str
    task: str
    turns: int
    metrics: dict[str, float]
    ci95: dict[str, list[float]] = field(default_factory=dict)
    n: int | None = None
    mcnemar_p: float | None = None
    published: bool = False
    group: str | None = None  # the breakdown value for a group row

    @property
    def label(self) -> str:
        """A published row names its task, so the paper's MATH and HumanEval rows are never mistaken for each other."""
        return f"{self.run} (published, {TASK_TITLES.get(self.task, self.task)})" if self.published else self.run


def _mcnemar(counts: dict[str, int], turns: int) -> float | None:
    """Exact McNemar p of turn 1 against the last turn, from the run's integer counts."""
    if turns < 2:
        return None
    return mcnemar_exact(counts[f"i2c_t1_t{turns}"], counts[f"c2i_t1_t{turns}"])


def _row(run: RunData, values: dict, ci95: dict, counts: dict, group: str | None = None) -> Row:
    """A measured row from a summary's values (n and metrics by name), intervals and counts."""
    return Row(
        run=run.name,
        model=run.model,
        task=run.task,
        turns=run.turns,
        metrics={m: values[m] for m in metric_names(run.turns)[1:]},
        ci95=ci95,
        n=values["n"],
        mcnemar_p=_mcnemar(counts, run.turns),
        group=group,
    )


def run_row(run: RunData) -> Row:
    doc = run.summary
    return _row(run, doc, doc["ci95"], doc["counts"])


def group_row(run: RunData, group: Any, records: Sequence[Graded]) -> Row:
    summary = summarize(records)
    return _row(run, summary["metrics"], summary["ci95"], summary["counts"], str(group))


def breakdown_fields(runs: Sequence[RunData]) -> list[str]:
    """subject and/or level where the samples keep them (MATH), else the problem id (code tasks)."""
    present = [f for f in BREAKDOWN_FIELDS if any(s.get(f) is not None for run in runs for s in run.samples)]
    return present or ["id"]


def breakdown(runs: Sequence[RunData], key: str) -> list[Row]:
    """Group rows for every value of `key` (sorted), each value's runs together in the order given."""
    per_run = [group_by(zip(run.samples, run.graded), key=lambda pair: pair[0].get(key)) for run in runs]
    values = group_by({value for groups in per_run for value in groups}, key=lambda value: value)
    return [
        group_row(run, value, [graded for _, graded in groups[value]])
        for value in values
        for run, groups in zip(runs, per_run)
        if value in groups
    ]


# --- cells ---------------------------------------------------------------------------------------


def table_metrics(rows: Sequence[Row]) -> list[str]:
    """The metric columns for a set of rows: Acc@t1..t(max K), then each turn pair any row has."""
    turns = max(r.turns for r in rows)
    names = [f"acc_t{t}" for t in range(1, turns + 1)]
    pairs: list[tuple[int, int]] = []
    for r in sorted(rows, key=lambda r: r.turns):
        pairs += [p for p in turn_pairs(r.turns) if p not in pairs]
    for a, b in pairs:
        names += [f"delta_t{a}_t{b}", f"delta_i2c_t{a}_t{b}", f"delta_c2i_t{a}_t{b}"]
    return names


def percent(value: float, signed: bool = False) -> str:
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def cell(row: Row, name: str, with_ci: bool = True, signed: bool | None = None) -> str:
    """A metric in percent with its interval; differences (Δ, or any metric when signed) carry a sign."""
    if name not in row.metrics:
        return "—"
    signed = name.startswith("delta_t") if signed is None else signed
    text = percent(row.metrics[name], signed)
    if with_ci and name in row.ci95:
        low, high = row.ci95[name]
        text += f" [{percent(low, signed)}, {percent(high, signed)}]"
    return text


def p_value(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def table_cells(
    rows: Sequence[Row], lead: list[str], lead_cells, with_ci: bool = True
) -> tuple[list[str], list[list[str]]]:
    """Header and body of a table of rows: the lead columns, n, the metric columns, McNemar p."""
    names = table_metrics(rows)
    header = [*lead, "n", *[metric_label(m) for m in names], "McNemar p (t1 vs last)"]
    body = [
        [
            *lead_cells(r),
            str(r.n) if r.n is not None else "—",
            *[cell(r, m, with_ci) for m in names],
            p_value(r.mcnemar_p),
        ]
        for r in rows
    ]
    return header, body
