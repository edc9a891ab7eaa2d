"""Reading run directories back, and `score-eval runs`."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.errors import HarnessError
from harness.reports.runs import find_runs, load_run, problem_statements
from tests.conftest import run_cli
from tests.reports_helpers import make_run


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    make_run(tmp, "base")
    make_run(tmp, "trained")
    root = tmp / "results"
    # A run that stopped before its summary, and a model checkpoint whose config.json is not a run's.
    (root / "crashed").mkdir()
    (root / "crashed" / "config.json").write_text(
        json.dumps({"run_name": "crashed", "started": "2000-01-01T00:00:00+00:00",
                    "settings": {"task": "math", "turns": 3}, "engine": {"model": "m"}})
    )  # fmt: skip
    (root / "trained" / "checkpoint").mkdir()
    (root / "trained" / "checkpoint" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return root


def test_find_runs_lists_finished_and_unfinished_runs_oldest_first(results):
    listings = find_runs(results)
    assert [r.name for r in listings] == ["crashed", "base", "trained"]
    crashed, base, trained = listings
    assert (crashed.turns, crashed.n, crashed.acc_t1) == (3, None, None)
    assert (base.task, base.model, base.turns, base.n, base.acc_t1, base.acc_tk) == (
        "math",
        "scripted",
        2,
        6,
        0.5,
        pytest.approx(2 / 6),
    )
    assert trained.acc_tk == 1.0


def test_runs_command_prints_the_table(results):
    result = run_cli(["runs", str(results)])
    assert result.returncode == 0, result.stderr
    base_line = next(line for line in result.stdout.splitlines() if f"{results / 'base'} " in line)
    assert "math" in base_line and "50.0%" in base_line and "33.3%" in base_line
    assert "no summary yet" in result.stdout


def test_runs_shows_each_runs_path_and_a_copy_by_its_own_directory(results, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(results / "base", root / "base")
    shutil.copytree(results / "base", root / "old" / "base-copy")
    listings = find_runs(root)
    assert [(r.path, r.name, r.recorded_name) for r in listings] == [
        (root / "base", "base", "base"),
        (root / "old" / "base-copy", "base-copy", "base"),
    ]
    result = run_cli(["runs", str(root)])
    assert result.returncode == 0, result.stderr
    assert f"{root / 'old' / 'base-copy'} (recorded as base) " in result.stdout
    assert f"{root / 'base'} " in result.stdout


def test_runs_of_a_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(HarnessError, match="no directory"):
        find_runs(tmp_path / "nope")


def test_load_run_reads_graded_records_aligned_with_samples(results):
    run = load_run(results / "base")
    assert [g.problem_id for g in run.graded] == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert [list(g.correct) for g in run.graded][:2] == [[True, True], [False, True]]


def test_load_run_refuses_an_unfinished_run(results):
    with pytest.raises(HarnessError, match="holds no summary.json"):
        load_run(results / "crashed")


def test_problem_statements_come_back_from_the_recorded_data_file(results):
    texts = problem_statements(load_run(results / "base"))
    assert texts["p2"] == "[p2] What is the answer to problem p2?"


def test_problem_statements_are_empty_when_the_data_file_is_gone(results, tmp_path):
    run = load_run(results / "base")
    run.config = {**run.config, "data": {**run.config["data"], "location": str(tmp_path / "moved.jsonl")}}
    assert problem_statements(run) == {}


def test_skipped_episodes_are_counted_but_not_reported(results, tmp_path):
    run_dir = tmp_path / "with-skip"
    shutil.copytree(results / "base", run_dir)
    skipped = {"id": "p7", "sample": 0, "answer": "1", "skipped": "prompt too long at turn 2", "turns": [{}]}
    with (run_dir / "samples.jsonl").open("a") as fh:
        fh.write(json.dumps(skipped) + "\n")
    run = load_run(run_dir)
    assert run.skipped == 1
    assert [s["id"] for s in run.samples] == ["p1", "p2", "p3", "p4", "p5", "p6"]
