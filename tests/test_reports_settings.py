"""Comparable runs: the settings that change a result are in summary.csv and `runs`, and `report`
says, in the report itself, when runs of a task differ in more than the model."""

from __future__ import annotations

import csv
import hashlib

import pytest

from harness.reports.compare import build_report, markdown_text
from harness.reports.runs import find_runs, load_runs
from harness.reports.settings import differing_settings
from tests.conftest import run_cli
from tests.reports_helpers import make_run


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """base and trained (same settings, other answers), and base again sampled with a smaller budget."""
    tmp = tmp_path_factory.mktemp("settings")
    make_run(tmp, "base")
    make_run(tmp, "trained")
    make_run(tmp, "base", "hot", temperature=0.8, top_p=0.95, max_new_tokens=64, limit=5, seed=3)
    return tmp / "results"


def _csv_row(run_dir) -> dict[str, str]:
    [row] = csv.DictReader((run_dir / "summary.csv").open())
    return row


def test_summary_csv_carries_the_settings_that_change_a_result(results):
    row = _csv_row(results / "hot")
    sha = hashlib.sha256((results.parent / "problems.jsonl").read_bytes()).hexdigest()
    assert {k: row[k] for k in ("backend", "turns", "samples", "temperature", "top_p", "max_new_tokens", "limit",
                                "seed", "data_sha256")} == {  # fmt: skip
        "backend": "scripted", "turns": "2", "samples": "1", "temperature": "0.8", "top_p": "0.95",
        "max_new_tokens": "64", "limit": "5", "seed": "3", "data_sha256": sha,
    }  # fmt: skip
    assert row["date"].startswith("20") and "T" in row["date"]
    # Without a limit the whole file was used; without --max-new-tokens the task's 1024.
    base = _csv_row(results / "base")
    assert (base["limit"], base["max_new_tokens"], base["temperature"]) == ("all", "1024", "0.0")


def test_runs_lists_each_runs_settings(results):
    listings = {r.name: r for r in find_runs(results)}
    assert listings["hot"].settings["temperature"] == 0.8
    assert (listings["hot"].settings["max_new_tokens"], listings["hot"].settings["limit"]) == (64, 5)
    result = run_cli(["runs", str(results)])
    assert result.returncode == 0, result.stderr
    hot = next(line for line in result.stdout.splitlines() if f"{results / 'hot'} " in line)
    assert " 0.8 " in hot and " 0.95 " in hot and " 64 " in hot


def test_runs_that_differ_only_in_the_model_get_no_warning(results):
    assert build_report(load_runs([results / "base", results / "trained"])).warnings == []


def test_report_names_every_other_setting_that_differs_with_each_runs_value(results):
    report = build_report(load_runs([results / "base", results / "hot"]))
    [warning] = report.warnings
    assert warning == (
        "the math runs differ in more than the model, so their differences are not the model's alone: "
        "temperature: 0.0 (base), 0.8 (hot); top_p: 1.0 (base), 0.95 (hot); max_new_tokens: 1024 (base), 64 (hot); "
        "limit: all (base), 5 (hot)"
    )
    assert f"> **Warning:** {warning}." in markdown_text(report).splitlines()


def test_report_command_warns_in_the_report_and_on_stderr(results, tmp_path):
    out = tmp_path / "r.md"
    result = run_cli(["report", str(results / "base"), str(results / "hot"), "--output", str(out), "--no-html"])
    assert result.returncode == 0, result.stderr
    assert "warning: the math runs differ in more than the model" in result.stderr
    assert "max_new_tokens: 1024 (base), 64 (hot)" in out.read_text()


def test_a_setting_a_run_did_not_record_is_not_called_a_difference():
    runs = [("old", {"turns": 2, "temperature": None}), ("new", {"turns": 2, "temperature": 0.0})]
    assert differing_settings(runs) == []
    assert differing_settings([("a", {"turns": 2}), ("b", {"turns": 3})]) == ["turns: 2 (a), 3 (b)"]
