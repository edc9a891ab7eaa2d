"""`score-eval report`: the cross-run table, breakdowns, paired differences, CSV and plots.

The runs are real run directories from `execute_run` with a scripted engine (tests/reports_helpers.py):
    base:    p1 c2c, p2 i2c, p3 c2i, p4 i2i, p5 c2i, p6 i2i   -> Acc@t1 3/6, Acc@t2 2/6
    trained: p1 c2c, p2 i2c, p3 c2c, p4 i2c, p5 c2c, p6 i2c   -> Acc@t1 3/6, Acc@t2 6/6
"""

from __future__ import annotations

import csv
import io
import shutil

import pytest

from harness.errors import HarnessError
from harness.reports.compare import build_report, csv_text, markdown_text, published_rows, write_report
from harness.reports.plots import transitions_figure
from harness.reports.rows import Row, breakdown, breakdown_fields, table_metrics
from harness.reports.runs import RunData, load_run, load_runs, run_labels
from tests.conftest import run_cli
from tests.reports_helpers import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[RunData]:
    tmp = tmp_path_factory.mktemp("compare")
    return [load_run(make_run(tmp, "base")), load_run(make_run(tmp, "trained"))]


@pytest.fixture(scope="module")
def report(runs):
    return build_report(runs, with_paper=True)


def test_run_rows_carry_the_summary_and_the_exact_mcnemar_p(report):
    base, trained = report.rows[:2]
    assert (base.run, base.n, base.metrics["acc_t1"], base.metrics["acc_t2"]) == (
        "base",
        6,
        0.5,
        pytest.approx(2 / 6),
    )
    # base: 1 wrong→right, 2 right→wrong: m = 3, p = 2 * (C(3,0) + C(3,1)) / 8 = 1 (capped).
    assert base.mcnemar_p == 1.0
    # trained: 3 wrong→right, 0 right→wrong: p = 2 * C(3,0) / 8 = 0.25.
    assert trained.mcnemar_p == pytest.approx(0.25)
    assert trained.metrics["delta_t1_t2"] == pytest.approx(0.5)


def test_with_paper_adds_the_published_math_rows_only_for_a_math_report(report):
    published = [r for r in report.rows if r.published]
    assert [(r.label, r.model) for r in published] == [
        ("Base model (published, MATH)", "Gemini 1.5 Flash"),
        ("SCoRe (published, MATH)", "Gemini 1.5 Flash"),
    ]
    assert published[0].metrics == {
        "acc_t1": 0.526, "acc_t2": 0.414, "delta_t1_t2": -0.112, "delta_i2c_t1_t2": 0.046, "delta_c2i_t1_t2": 0.158,
    }  # fmt: skip
    assert published[1].metrics["acc_t2"] == 0.644
    assert all(r.n is None and r.ci95 == {} and r.mcnemar_p is None for r in published)


def test_published_rows_only_for_the_tasks_the_paper_reports():
    assert published_rows(["gsm8k"]) == []
    rows = published_rows(["humaneval", "gsm8k"])
    assert [(r.task, r.label) for r in rows] == [
        ("humaneval", "Base model (published, HumanEval)"), ("humaneval", "SCoRe (published, HumanEval)"),
    ]  # fmt: skip
    assert rows[1].metrics["delta_t1_t2"] == 0.122


def _as_task(run: RunData, task: str, label: str) -> RunData:
    return RunData(run.path, {**run.summary, "run": {**run.info, "task": task}}, run.samples, run.config, label=label)


def test_with_paper_over_math_and_humaneval_puts_each_paper_row_beside_its_own_tasks_runs(runs):
    mixed = [runs[0], _as_task(runs[1], "humaneval", "code"), _as_task(runs[1], "gsm8k", "words")]
    report = build_report(mixed, with_paper=True)
    assert [(r.label, r.task) for r in report.rows] == [
        ("base", "math"),
        ("Base model (published, MATH)", "math"),
        ("SCoRe (published, MATH)", "math"),
        ("code", "humaneval"),
        ("Base model (published, HumanEval)", "humaneval"),
        ("SCoRe (published, HumanEval)", "humaneval"),
        ("words", "gsm8k"),
    ]
    text = markdown_text(report)
    assert "| SCoRe (published, HumanEval) | Gemini 1.0 Pro | humaneval | — | 52.4 | 64.6 |" in text
    assert "The paper reports no results for gsm8k, so it has no rows here." in text


def test_math_runs_break_down_by_subject_and_level(runs, report):
    assert breakdown_fields(runs) == ["subject", "level"]
    subjects = [(r.group, r.run) for r in report.breakdowns["subject"]]
    assert subjects == [
        ("Algebra", "base"), ("Algebra", "trained"), ("Geometry", "base"), ("Geometry", "trained"),
        ("Number Theory", "base"), ("Number Theory", "trained"),
    ]  # fmt: skip
    geometry_base = report.breakdowns["subject"][2]
    # base on Geometry: p3 c2i, p4 i2i -> Acc@t1 1/2, Acc@t2 0, Δc→i 1/2, n 2.
    assert geometry_base.n == 2
    assert geometry_base.metrics["acc_t1"] == 0.5
    assert geometry_base.metrics["acc_t2"] == 0.0
    assert geometry_base.metrics["delta_c2i_t1_t2"] == 0.5
    # Levels in numeric order; level 5 is p6 alone (base i2i, trained i2c).
    levels = report.breakdowns["level"]
    assert [r.group for r in levels] == ["1", "1", "2", "2", "3", "3", "5", "5"]
    assert (levels[-1].metrics["acc_t2"], levels[-2].metrics["acc_t2"]) == (1.0, 0.0)


def test_samples_without_subject_or_level_break_down_by_problem(runs):
    stripped = [
        RunData(
            r.path,
            r.summary,
            [{k: v for k, v in s.items() if k not in ("subject", "level")} for s in r.samples],
        )
        for r in runs
    ]
    assert breakdown_fields(stripped) == ["id"]
    rows = breakdown(stripped[:1], "id")
    assert [r.group for r in rows] == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert [r.metrics["acc_t2"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_trained_minus_base_is_paired_on_the_same_problems(report):
    [diff] = report.differences
    assert (diff.run, diff.baseline, diff.result["problems"]) == ("trained", "base", 6)
    # Identical turn-1 verdicts: 0 with a zero-width paired interval.
    assert diff.result["metrics"]["acc_t1"] == 0.0
    assert diff.result["ci95"]["acc_t1"] == [0.0, 0.0]
    # Acc@t2: 6/6 - 2/6.
    assert diff.result["metrics"]["acc_t2"] == pytest.approx(4 / 6)


def test_runs_of_different_tasks_are_not_differenced(runs):
    other = RunData(runs[1].path, {**runs[1].summary, "run": {**runs[1].info, "task": "other"}}, runs[1].samples)
    assert build_report([runs[0], other]).differences == []


def test_table_columns_cover_every_turn_and_pair_present():
    two = Row("a", "m", "math", 2, {})
    three = Row("b", "m", "math", 3, {})
    assert table_metrics([two, three]) == [
        "acc_t1", "acc_t2", "acc_t3",
        "delta_t1_t2", "delta_i2c_t1_t2", "delta_c2i_t1_t2",
        "delta_t2_t3", "delta_i2c_t2_t3", "delta_c2i_t2_t3",
        "delta_t1_t3", "delta_i2c_t1_t3", "delta_c2i_t1_t3",
    ]  # fmt: skip


def test_markdown_shows_percentages_intervals_p_values_and_published_marks(report):
    text = markdown_text(report, {"Accuracy by turn": "report-accuracy.png"})
    lines = text.splitlines()
    base_line = next(line for line in lines if line.startswith("| base |"))
    assert base_line.startswith("| base | scripted | math | 6 | 50.0 [")
    assert base_line.endswith("| 1.000 |")
    assert next(line for line in lines if line.startswith("| trained |")).endswith("| 0.250 |")
    assert "| SCoRe (published, MATH) | Gemini 1.5 Flash | math | — | 60.0 | 64.4 | +4.4 | 5.8 | 1.4 | — |" in lines
    assert "| trained | base | 6 | +0.0 [+0.0, +0.0] | +66.7 [" in text
    assert "![Accuracy by turn](report-accuracy.png)" in lines
    assert "## By subject" in lines and "## By level" in lines


def test_csv_is_tidy_with_one_line_per_run_group_and_difference(report):
    rows = list(csv.DictReader(io.StringIO(csv_text(report))))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("run") == 2 and kinds.count("published") == 2 and kinds.count("difference") == 1
    assert kinds.count("group") == 6 + 8
    trained = next(r for r in rows if r["kind"] == "run" and r["run"] == "trained")
    assert float(trained["acc_t2"]) == 1.0
    assert float(trained["mcnemar_p_t1_tlast"]) == 0.25
    diff = next(r for r in rows if r["kind"] == "difference")
    assert (diff["run"], diff["baseline"], float(diff["acc_t1_ci_low"]), float(diff["acc_t1_ci_high"])) == (
        "trained", "base", 0.0, 0.0,
    )  # fmt: skip


def test_report_command_writes_table_csv_plots_and_each_runs_html(runs, tmp_path):
    out = tmp_path / "out" / "study.md"
    result = run_cli(["report", str(runs[0].path), str(runs[1].path), "--output", str(out),
                      "--csv", str(tmp_path / "study.csv"), "--with-paper"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| trained | base | 6 |" in out.read_text()
    assert "![Accuracy by turn](study-accuracy.png)" in out.read_text()
    for png in (out.with_name("study-accuracy.png"), out.with_name("study-transitions.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "study.csv").read_text().startswith("kind,run,baseline,")
    assert (runs[0].path / "report.html").exists() and (runs[1].path / "report.html").exists()
    assert "(published, MATH)" in result.stdout


def test_report_command_names_a_folder_that_is_not_a_run(tmp_path):
    result = run_cli(["report", str(tmp_path)])
    assert result.returncode == 2
    assert "holds no summary.json" in result.stderr


def test_a_one_turn_run_has_no_deltas_and_is_differenced_on_turn_one_only(runs, tmp_path):
    one = load_run(make_run(tmp_path, "base", "one-turn", turns=1))
    report = build_report([one, runs[1]])
    assert report.rows[0].mcnemar_p is None
    assert "| one-turn | scripted | math | 6 | 50.0 [16.7, 83.3] | — | — | — | — | — |" in markdown_text(report)
    [diff] = report.differences
    assert list(diff.result["metrics"]) == ["acc_t1"]


def test_a_run_directory_that_cannot_take_report_html_is_a_one_line_error(runs, tmp_path, monkeypatch):
    def refuse(path, text):
        if path.name == "report.html":
            raise PermissionError(13, "Permission denied", str(path))
        path.write_text(text)

    monkeypatch.setattr("harness.reports.html.atomic_write_text", refuse)
    with pytest.raises(
        HarnessError, match=r"cannot write report.html \(.*report.html: Permission denied\); pass --no-html"
    ):
        write_report([runs[0].path], output=tmp_path / "r.md")
    assert (tmp_path / "r.md").exists()


def test_runs_are_labelled_by_their_directory_not_the_name_recorded_inside(runs, tmp_path):
    copy = tmp_path / "base-retry"
    shutil.copytree(runs[0].path, copy)
    report = build_report(load_runs([runs[0].path, copy]))
    assert [r.run for r in report.rows] == ["base", "base-retry"]
    [diff] = report.differences
    assert (diff.run, diff.baseline) == ("base-retry", "base")
    assert "| base-retry | base | 6 |" in markdown_text(report)
    # Each run has a bar of its own in the transitions plot.
    ax = transitions_figure(report.rows).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "base-retry"]
    assert len({round(p.get_x(), 3) for p in ax.patches}) == 2


def test_directories_of_the_same_name_get_their_parent_folder_in_the_label(tmp_path):
    a, b = tmp_path / "x" / "a" / "run", tmp_path / "x" / "b" / "run"
    assert run_labels([a, b, tmp_path / "other"]) == ["a/run", "b/run", "other"]
    assert run_labels([a, a]) == ["run", "run #2"]


def test_report_of_a_copied_run_never_differences_a_run_with_itself(runs, tmp_path):
    for parent in ("first", "second"):
        shutil.copytree(runs[0].path, tmp_path / parent / "base")
    out = tmp_path / "r.md"
    result = run_cli(["report", str(tmp_path / "first" / "base"), str(tmp_path / "second" / "base"),
                      "--output", str(out), "--no-html"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "| second/base | first/base | 6 |" in text
    assert "| base | base |" not in text


@pytest.mark.parametrize("where", ["output", "csv"])
def test_report_into_an_impossible_path_is_a_one_line_error(runs, tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "report.md"
    target = blocker / "sub" / "report.md" if where == "output" else blocker / "report.csv"
    args = ["--output", str(target)] if where == "output" else ["--output", str(out), "--csv", str(target)]
    result = run_cli(["report", str(runs[0].path), *args, "--no-html"])
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {target} ({blocker}") and line.endswith(f"choose another --{where}")
    assert "Traceback" not in result.stderr


def test_a_csv_into_a_new_folder_creates_it_as_the_report_does(runs, tmp_path):
    files = write_report([runs[0].path], output=tmp_path / "r.md", csv_path=tmp_path / "new" / "r.csv", html=False)
    assert files.csv.read_text().startswith("kind,run,")
