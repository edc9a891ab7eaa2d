"""Issue 8's "done when", end to end on the embedded model: two small real MATH runs, then
`report`, `show` and `runs` as a user types them. Slow (two model runs): `pytest -m slow`."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_report_show_and_runs_on_two_real_runs(tmp_path, math500):
    common = ["run", "--task", "math", "--data", str(math500), "--turns", "2", "--limit", "3",
              "--max-new-tokens", "24", "--output-dir", str(tmp_path / "results")]  # fmt: skip
    for name, extra in [("greedy", []), ("sampled", ["--temperature", "0.7", "--seed", "1"])]:
        result = run_cli([*common, "--run-name", name, *extra])
        assert result.returncode == 0, result.stderr
    runs = [str(tmp_path / "results" / name) for name in ("greedy", "sampled")]

    result = run_cli(["report", *runs, "--output", str(tmp_path / "report.md"), "--csv", str(tmp_path / "report.csv"),
                      "--with-paper"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "report.md").read_text()
    assert "| greedy | SmolLM2-135M-Instruct | math | 3 |" in text
    assert "| sampled | greedy | 3 |" in text  # the paired difference on the same 3 problems
    assert "## By subject" in text and "## By level" in text
    for png in ("report-accuracy.png", "report-transitions.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert {r["kind"] for r in rows} == {"run", "published", "group", "difference"}
    assert all((tmp_path / "results" / name / "report.html").exists() for name in ("greedy", "sampled"))

    shown = run_cli(["show", runs[0], "--limit", "3"])
    assert shown.returncode == 0, shown.stderr
    assert "gold answer:" in shown.stdout and "turn 2 ·" in shown.stdout
    assert "greedy: 3 of 3 episode(s) shown (of 3)." in shown.stdout

    listed = run_cli(["runs", str(tmp_path / "results")])
    assert listed.returncode == 0 and "greedy" in listed.stdout and "sampled" in listed.stdout
