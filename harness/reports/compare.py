"""`score-eval report`: the paper-style table across runs, breakdowns, and paired differences.

A report is rows of one shape (`harness.reports.rows.Row`): measured runs, the SCoRe paper's
published rows, and the groups of each breakdown. This module puts them together and writes the
Markdown, the CSV, the plots (plots.py) and each run's page (html.py); nothing imports it back.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.metrics import metric_names
from harness.reports.html import write_run_html
from harness.reports.plots import accuracy_figure, save_png, transitions_figure
from harness.reports.rows import (
    BREAKDOWN_TITLES,
    Row,
    breakdown,
    breakdown_fields,
    cell,
    run_row,
    table_cells,
    table_metrics,
)
from harness.reports.runs import RunData, load_runs
from harness.reports.settings import differing_settings
from harness.reports.summary import metric_label
from harness.stats import paired_difference
from harness.store import atomic_write_text

PAPER = "Kumar et al. 2024 (arXiv 2409.12917)"

# Published SCoRe results, in percent: Acc@t1, Acc@t2, Δ(t1,t2), Δi→c(t1,t2), Δc→i(t1,t2).
PUBLISHED = [
    ("math", "Gemini 1.5 Flash", "Base model", (52.6, 41.4, -11.2, 4.6, 15.8)),
    ("math", "Gemini 1.5 Flash", "SCoRe", (60.0, 64.4, 4.4, 5.8, 1.4)),
    ("humaneval", "Gemini 1.0 Pro", "Base model", (53.7, 56.7, 3.0, 7.9, 4.9)),
    ("humaneval", "Gemini 1.0 Pro", "SCoRe", (52.4, 64.6, 12.2, 15.2, 3.0)),
]


@dataclass
class Difference:
    """Run minus baseline on their shared problems (see `harness.stats.paired_difference`)."""

    run: str
    baseline: str
    result: dict[str, Any]


@dataclass
class Report:
    rows: list[Row]
    breakdowns: dict[str, list[Row]]  # breakdown field -> group rows (group, then run order)
    differences: list[Difference]
    warnings: list[str] = field(default_factory=list)  # runs of a task that differ in more than the model
    unpublished: list[str] = field(default_factory=list)  # with the paper's rows: tasks the paper has none for


def published_rows(tasks: Sequence[str] = ()) -> list[Row]:
    """The paper's rows for the given tasks; none for a task the paper did not report."""
    names = metric_names(2)[1:]
    return [
        Row(
            run=method,
            model=model,
            task=task,
            turns=2,
            metrics={name: round(value / 100, 6) for name, value in zip(names, values)},
            published=True,
        )
        for task, model, method, values in PUBLISHED
        if task in tasks
    ]


def differences(runs: Sequence[RunData]) -> list[Difference]:
    """Every later run against the first (the baseline), where both ran the same task on shared problems."""
    if len(runs) < 2:
        return []
    base = runs[0]
    base_ids = {g.problem_id for g in base.graded}
    out = []
    for run in runs[1:]:
        if run.task != base.task or not base_ids & {g.problem_id for g in run.graded}:
            continue
        out.append(Difference(run.name, base.name, paired_difference(run.graded, base.graded)))
    return out


def setting_warnings(runs: Sequence[RunData]) -> list[str]:
    """For each task, the settings other than the model in which its runs differ, with each run's value."""
    warnings = []
    for task in dict.fromkeys(r.task for r in runs):
        lines = differing_settings([(r.name, r.settings) for r in runs if r.task == task])
        if lines:
            warnings.append(
                f"the {task} runs differ in more than the model, so their differences are not the model's alone: "
                + "; ".join(lines)
            )
    return warnings


def build_report(runs: Sequence[RunData], with_paper: bool = False) -> Report:
    # Runs grouped by task in the order given, each task's published rows right after its runs.
    rows, unpublished = [], []
    for task in dict.fromkeys(r.task for r in runs):
        rows += [run_row(r) for r in runs if r.task == task]
        paper = published_rows([task]) if with_paper else []
        rows += paper
        unpublished += [task] if with_paper and not paper else []
    breakdowns = {key: breakdown(runs, key) for key in breakdown_fields(runs)}
    return Report(rows, breakdowns, differences(runs), setting_warnings(runs), unpublished)


# --- formatting ---------------------------------------------------------------------------------


def _markdown_table(header: list[str], body: list[list[str]], right_from: int) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def rows_table(rows: Sequence[Row], lead: list[str], lead_cells, with_ci: bool = True) -> list[str]:
    header, body = table_cells(rows, lead, lead_cells, with_ci)
    return _markdown_table(header, body, right_from=len(lead))


def difference_table(diffs: Sequence[Difference]) -> list[str]:
    names = metric_names(max(d.result["turns"] for d in diffs))[1:]
    header = ["run", "minus", "shared problems", *[metric_label(m) for m in names]]
    body = []
    for d in diffs:
        row = Row(d.run, "", "", d.result["turns"], d.result["metrics"], d.result["ci95"])
        body.append([d.run, d.baseline, str(d.result["problems"]), *[cell(row, m, signed=True) for m in names]])
    return _markdown_table(header, body, right_from=2)


def markdown_text(report: Report, plots: dict[str, str] | None = None, breakdowns: bool = True) -> str:
    """The report as Markdown; `plots` maps a caption to an image path relative to the report.

    Without breakdowns it is the part worth printing in a terminal: results and differences.
    """
    measured = [r for r in report.rows if not r.published]
    lines = [
        "# Self-correction report",
        "",
        f"{len(measured)} run(s); written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Results",
        "",
        *[f"> **Warning:** {w}.\n" for w in report.warnings],
        *rows_table(report.rows, ["run", "model", "task"], lambda r: [r.label, r.model, r.task]),
        "",
        (
            "Percent of episodes (problems × samples). Brackets: 95% percentile bootstrap interval over "
            "problems, paired across turns. Δi→c and Δc→i are shares of all episodes, so "
            "Acc@tb = Acc@ta + Δi→c − Δc→i. McNemar p: exact two-sided test of turn 1 against the last turn "
            "on the same episodes (only episodes that changed verdict count)."
        ),
    ]
    if any(r.published for r in report.rows):
        lines += [
            "",
            (
                f"Rows marked (published, task) are copied from {PAPER}, not measured here: "
                "MATH on MATH-500 with Gemini 1.5 Flash, HumanEval with Gemini 1.0 Pro. "
                "Each stands beside the runs of its own task."
            ),
        ]
    if report.unpublished:
        lines += ["", f"The paper reports no results for {', '.join(report.unpublished)}, so it has no rows here."]
    if report.differences:
        lines += [
            "",
            "## Differences between runs",
            "",
            *difference_table(report.differences),
            "",
            (
                "Each run minus the first run, on the problems both ran, in percentage points. Brackets: "
                "paired bootstrap interval (both runs resampled on the same problems); an interval that "
                "excludes 0 is a difference the resampling does not explain away."
            ),
        ]
    if plots:
        lines += ["", "## Plots", ""]
        for caption, path in plots.items():
            lines += [f"![{caption}]({path})", ""]
    for key, rows in report.breakdowns.items() if breakdowns else ():
        if not rows:
            continue
        title = BREAKDOWN_TITLES.get(key, key)
        lines += [
            "",
            f"## By {title}",
            "",
            *rows_table(rows, [title, "run"], lambda r: [r.group, r.run], with_ci=False),
            "",
            "Point values in percent; each group's intervals are in the CSV.",
        ]
    lines.append("")
    return "\n".join(lines)


def csv_text(report: Report) -> str:
    """Tidy CSV: one line per run, published row, group row and difference, fractions in [0, 1]."""
    groups = [(key, r) for key, rows in report.breakdowns.items() for r in rows]
    all_rows = [r for r in report.rows] + [r for _, r in groups]
    names = table_metrics(all_rows)
    header = ["kind", "run", "baseline", "model", "task", "breakdown", "group", "n", *names]
    header += [f"{m}_ci_{side}" for m in names for side in ("low", "high")]
    header.append("mcnemar_p_t1_tlast")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def line(kind, row: Row, breakdown: str, group: str) -> list:
        values = [row.metrics.get(m, "") for m in names]
        cis = [row.ci95[m][i] if m in row.ci95 else "" for m in names for i in (0, 1)]
        p = "" if row.mcnemar_p is None else row.mcnemar_p
        return [kind, row.run, "", row.model, row.task, breakdown, group, row.n or "", *values, *cis, p]

    for r in report.rows:
        writer.writerow(line("published" if r.published else "run", r, "all", ""))
    for key, r in groups:
        writer.writerow(line("group", r, BREAKDOWN_TITLES.get(key, key), r.group or ""))
    for d in report.differences:
        res = d.result
        values = [res["metrics"].get(m, "") for m in names]
        cis = [res["ci95"][m][i] if m in res["ci95"] else "" for m in names for i in (0, 1)]
        writer.writerow(["difference", d.run, d.baseline, "", "", "shared problems", "", res["n_a"], *values, *cis, ""])
    return buf.getvalue()


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path | None
    plots: list[Path]
    html: list[Path]
    report: Report


def write_report(
    run_dirs: Sequence[str | Path],
    output: str | Path = "report.md",
    csv_path: str | Path | None = None,
    with_paper: bool = False,
    html: bool = True,
) -> ReportFiles:
    """Read the runs, then write the Markdown report, its plots beside it, the CSV and each run's report.html."""
    runs = load_runs(run_dirs)
    report = build_report(runs, with_paper=with_paper)
    output = Path(output)
    plot_files = {
        "Accuracy by turn": (output.with_name(f"{output.stem}-accuracy.png"), accuracy_figure(report.rows)),
        "Transitions between turn 1 and the last turn": (
            output.with_name(f"{output.stem}-transitions.png"),
            transitions_figure(report.rows),
        ),
    }
    with _writing(output, "choose another --output"):
        output.parent.mkdir(parents=True, exist_ok=True)
        for path, figure in plot_files.values():
            save_png(figure, path)
        atomic_write_text(output, markdown_text(report, {c: p.name for c, (p, _) in plot_files.items()}))
    if csv_path is not None:
        csv_path = Path(csv_path)
        with _writing(csv_path, "choose another --csv"):
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(csv_path, csv_text(report))
    with _writing("report.html", "pass --no-html to skip the per-run pages"):
        html_files = [write_run_html(run) for run in runs] if html else []
    return ReportFiles(output, csv_path, [p for p, _ in plot_files.values()], html_files, report)


@contextmanager
def _writing(what: str | Path, fix: str) -> Iterator[None]:
    """Turn a failed write (no such folder, a file where a folder should be, no permission, a full
    disk) into one error line that names what was being written, the path that failed, and the fix."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.filename and str(exc.filename) != str(what):
            reason = f"{exc.filename}: {reason}"
        raise HarnessError(f"cannot write {what} ({reason}); {fix}") from exc
