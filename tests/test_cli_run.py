"""`score-eval run` end to end, as a user runs it, on the embedded model and real MATH-500 data."""

import csv
import json

import pytest

from harness.config import RunConfig
from harness.metrics import Graded, summarize
from harness.run import execute_run
from tests.conftest import ScriptedEngine, run_cli


def _recompute(run_dir):
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return samples, summarize([Graded(s["id"], [t["correct"] for t in s["turns"]]) for s in samples])


def test_done_when_default_model_writes_all_five_files(tmp_path, math500):
    # The command of the "done when", with no --model: the embedded SmolLM2.
    result = run_cli(
        [
            "run",
            "--task",
            "math",
            "--data",
            str(math500),
            "--turns",
            "2",
            "--limit",
            "4",
            "--max-new-tokens",
            "48",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "demo",
        ]
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "demo"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "samples.jsonl",
        "summary.csv",
        "summary.json",
        "summary.md",
    ]
    samples, recomputed = _recompute(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["id"] for s in samples] == [
        json.loads(line)["unique_id"] for line in math500.read_text().splitlines()[:4]
    ]
    assert all(len(s["turns"]) == 2 and set(s["turns"][0]) >= {"response", "extracted", "correct"} for s in samples)
    for name, value in recomputed["metrics"].items():
        assert summary[name] == value
    config = json.loads((run_dir / "config.json").read_text())
    assert config["engine"]["model"] == "SmolLM2-135M-Instruct"
    assert config["data"]["sha256"] and config["data"]["problems_used"] == 4
    assert config["sampling"]["max_new_tokens"] == 48
    assert "Accuracy@t1" in result.stderr  # the rich summary table


def test_summaries_agree_with_samples_on_a_scripted_run(tmp_path, math500):
    # Scripted answers make every transition occur: right->right, wrong->right, right->wrong, wrong->wrong.
    answers = {json.loads(line)["problem"]: json.loads(line)["answer"] for line in math500.read_text().splitlines()[:8]}
    plan = ["rr", "wr", "rw", "ww", "wr", "wr", "rr", "ww"]
    order = list(answers)

    def reply(conv):
        problem = conv[0]["content"].split("Problem:\n", 1)[1].rsplit("\n\nSolution:", 1)[0]
        turn = (len(conv) + 1) // 2
        right = plan[order.index(problem)][turn - 1] == "r"
        return f"Final Answer: The final answer is ${answers[problem] if right else 'nothing'}$. I hope it is correct."

    result = execute_run(
        RunConfig(data=str(math500), limit=8, output_dir=str(tmp_path), run_name="scripted"),
        engine=ScriptedEngine(reply),
    )
    summary = result.summary
    # By hand from `plan`: t1 right = rr,rw,rr = 3/8; t2 right = rr,wr,wr,wr,rr = 5/8;
    # wrong->right = 3/8; right->wrong = 1/8.
    assert (summary["acc_t1"], summary["acc_t2"]) == (3 / 8, 5 / 8)
    assert (summary["delta_i2c_t1_t2"], summary["delta_c2i_t1_t2"]) == (3 / 8, 1 / 8)
    assert summary["delta_t1_t2"] == pytest.approx(2 / 8)
    row = next(csv.DictReader((result.run_dir / "summary.csv").open()))
    assert float(row["acc_t2"]) == 5 / 8 and row["run"] == "scripted"
    md = (result.run_dir / "summary.md").read_text()
    assert "| Accuracy@t2 | 62.5% |" in md and "| Δi→c(t1,t2) | 37.5% |" in md


def test_the_console_summary_heading_is_one_line_and_counts_one_sample_in_the_singular(tmp_path, math500):
    import io

    from rich.console import Console

    from harness.cli import _show_summary

    result = execute_run(
        RunConfig(
            data=str(math500),
            limit=2,
            output_dir=str(tmp_path),
            run_name="a-rather-long-run-name-for-a-narrow-terminal",
        ),
        engine=ScriptedEngine(lambda c: "x"),
    )
    out = io.StringIO()
    _show_summary(result.summary, Console(file=out, width=60))
    assert out.getvalue().splitlines()[0] == (
        "a-rather-long-run-name-for-a-narrow-terminal: math · scripted · 2 episodes (2 problems × 1 sample)"
    )


def test_rerunning_a_finished_run_keeps_it_as_it_is(tmp_path, math500):
    config = RunConfig(data=str(math500), limit=1, output_dir=str(tmp_path), run_name="once")
    execute_run(config, engine=ScriptedEngine(lambda c: "x"))
    before = (tmp_path / "once" / "samples.jsonl").read_text()
    engine = ScriptedEngine(lambda c: "y")
    again = execute_run(config, engine=engine)
    assert again.resumed and engine.calls == []
    assert (tmp_path / "once" / "samples.jsonl").read_text() == before


def test_what_a_kill_while_writing_results_leaves_is_removed_when_the_run_is_rerun(tmp_path, math500):
    """A run killed while writing its results: a journal beside summary.json (killed between the
    two; the summaries already hold every journal line) and a half-written temporary file of
    atomic_write_text. Rerunning finds the run complete, generates nothing and removes both; they
    stayed forever before (tests/test_resume.py's kill "while writing results" can land there).
    Other temporary files stay: the user's, and those of `report`, which writes without the run's lock."""
    from harness.episodes import journal_events
    from harness.store import JOURNAL, read_jsonl, write_jsonl

    config = RunConfig(data=str(math500), limit=2, output_dir=str(tmp_path), run_name="killed")
    execute_run(config, engine=ScriptedEngine(lambda c: "x"))
    run_dir = tmp_path / "killed"
    before = {name: (run_dir / name).read_bytes() for name in ("samples.jsonl", "summary.json")}
    write_jsonl(run_dir / JOURNAL, (e for r in read_jsonl(run_dir / "samples.jsonl") for e in journal_events(r)))
    (run_dir / ".summary.md.0123456789ab.tmp").write_text("| half a tab")
    (run_dir / ".my-notes.tmp").write_text("mine")
    (run_dir / ".report.html.0123456789ab.tmp").write_text("<html")  # `report` writes it without the lock
    engine = ScriptedEngine(lambda c: "y")
    again = execute_run(config, engine=engine)
    assert again.resumed and engine.calls == []
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [
        ".my-notes.tmp",
        ".report.html.0123456789ab.tmp",
    ]
    assert not (run_dir / JOURNAL).exists()
    assert {name: (run_dir / name).read_bytes() for name in before} == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--turns", "0"], "--turns must be at least 1"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--max-new-tokens", "-5"], "--max-new-tokens must be positive"),
        (["--backend", "nope"], "unknown backend 'nope'"),
        (["--model", "/no/such/model"], "does not exist"),
        (["--data", "/no/such.jsonl"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(tmp_path, math500, args, message):
    base = ["run", "--output-dir", str(tmp_path / "out"), "--run-name", "bad", "--limit", "1"]
    if "--data" not in args:
        base += ["--data", str(math500)]
    result = run_cli(base + args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out" / "bad").exists()


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/tmp/escape", "../up", ".hidden", "a\\b"])
def test_a_run_name_that_is_not_one_plain_directory_name_is_refused(tmp_path, math500, name):
    out = tmp_path / "out"
    result = run_cli(["run", "--data", str(math500), "--limit", "1", "--output-dir", str(out), "--run-name", name])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --run-name") and "not a plain name" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing in --output-dir, nor in its parent


def test_no_data_offline_fails_fast_naming_data(tmp_path):
    result = run_cli(["run", "--output-dir", str(tmp_path), "--limit", "1"], env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    assert result.returncode == 2
    assert "--data" in result.stderr and "Traceback" not in result.stderr
