"""Nothing lost, nothing silently wrong: kill -9 and resume, torn lines, changed settings, regrade,
determinism, and the bad inputs that remain after test_cli_run.py."""

import csv
import json
import os
import shlex
import signal
import time

import pytest

from harness.config import RunConfig
from harness.engines.base import PROMPT_TOO_LONG, Completion
from harness.errors import HarnessError
from harness.run import execute_run
from harness.store import Journal
from tests.conftest import ScriptedEngine, run_cli, start_cli

RIGHT = "Final Answer: The final answer is ${}$. I hope it is correct."


def _run_args(math500, model, out, name, extra=()):
    return [
        "run",
        "--model",
        str(model),
        "--data",
        str(math500),
        "--limit",
        "12",
        "--turns",
        "2",
        "--max-new-tokens",
        "12",
        "--batch-size",
        "1",
        "--output-dir",
        str(out),
        "--run-name",
        name,
        *extra,
    ]


def _wait_for(condition, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def _journal_lines(run_dir):
    path = run_dir / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, math500_path, tiny_model_dir):
    out = tmp_path_factory.mktemp("baseline")
    # Same run name as the interrupted runs (it is part of the summaries), another directory.
    result = run_cli(_run_args(math500_path, tiny_model_dir, out, "r"))
    assert result.returncode == 0, result.stderr
    return out / "r"


@pytest.fixture(scope="module")
def math500_path():
    from tests.conftest import MATH500, require_shared

    return require_shared(MATH500)


# 12 problems x 2 turns: 24 generation lines and 24 grade lines in the journal.
KILL_POINTS = {
    "while loading": lambda run_dir: True,
    "mid turn 1": lambda run_dir: _journal_lines(run_dir) >= 5,
    "mid turn 2": lambda run_dir: _journal_lines(run_dir) >= 12 + 12 + 4,
    "while writing results": lambda run_dir: (run_dir / "samples.jsonl").exists(),
}


def _without_date(path):
    rows = list(csv.DictReader(path.open()))
    assert rows and all(row.pop("date") for row in rows)
    return rows


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_matches_an_uninterrupted_run_byte_for_byte(
    tmp_path, math500_path, tiny_model_dir, baseline, point
):
    args = _run_args(math500_path, tiny_model_dir, tmp_path, "r")
    proc = start_cli(args)
    reached = _wait_for(lambda: KILL_POINTS[point](tmp_path / "r"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not reached:
        pytest.skip(f"the run finished before the kill point '{point}' was seen")
    assert not (tmp_path / "r" / "summary.json").exists() or point == "while writing results"
    if not (tmp_path / "r" / "config.json").exists():
        # Killed before the run directory existed: there is nothing to resume, so --resume is refused
        # and the same command without it starts the run.
        refused = run_cli(args + ["--resume"])
        assert refused.returncode == 2 and "there is no run 'r'" in refused.stderr
        resumed = run_cli(args)
    else:
        resumed = run_cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    for name in ("samples.jsonl", "summary.json", "summary.md"):
        assert (tmp_path / "r" / name).read_bytes() == (baseline / name).read_bytes(), name
    # summary.csv also records when each run started, which is all that may differ.
    assert _without_date(tmp_path / "r" / "summary.csv") == _without_date(baseline / "summary.csv")
    records = [json.loads(line) for line in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == len({(r["id"], r["sample"]) for r in records}) == 12
    assert not (tmp_path / "r" / "journal.jsonl").exists()


def test_ctrl_c_keeps_finished_work_and_prints_the_resume_command(tmp_path, math500_path, tiny_model_dir, baseline):
    args = _run_args(math500_path, tiny_model_dir, tmp_path, "r")
    proc = start_cli(args)
    assert _wait_for(lambda: _journal_lines(tmp_path / "r") >= 5, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Resume with:" in stderr
    # The command is one line however long (never wrapped at 80 columns), so pasting it runs it.
    command = stderr.rstrip().splitlines()[-1]
    assert len(command) > 80 and shlex.split(command) == ["score-eval", *args, "--resume"]
    assert _journal_lines(tmp_path / "r") >= 5
    assert run_cli(args + ["--resume"]).returncode == 0
    assert (tmp_path / "r" / "samples.jsonl").read_bytes() == (baseline / "samples.jsonl").read_bytes()


def test_results_and_journal_are_created_with_the_same_mode_from_the_umask(tmp_path):
    from harness.store import write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "summary.json", {})
        Journal(tmp_path / "journal.jsonl").append([{"a": 1}])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"summary.json": 0o640, "journal.jsonl": 0o640}


def test_torn_last_line_is_dropped_and_the_file_truncated(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert Journal(path).replay() == [{"a": 1}, {"b": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    Journal(path).append([{"d": 4}])
    assert Journal(path).replay() == [{"a": 1}, {"b": 2}, {"d": 4}]


def test_corrupt_line_in_the_middle_is_an_error_not_a_silent_loss(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"a": 1}\n{oops\n{"b": 2}\n')
    with pytest.raises(HarnessError, match="line 2 is corrupt"):
        Journal(path).replay()


def test_resuming_with_other_settings_is_refused_naming_the_differences(tmp_path, math500_path):
    base = dict(data=str(math500_path), output_dir=str(tmp_path), run_name="x")
    execute_run(RunConfig(**base, limit=3), engine=ScriptedEngine(lambda c: "x"))
    with pytest.raises(HarnessError) as info:
        execute_run(
            RunConfig(**base, limit=2, turns=1, temperature=0.7, max_new_tokens=5), engine=ScriptedEngine(lambda c: "x")
        )
    message = str(info.value)
    assert "sampling.temperature (0.0 -> 0.7)" in message and "sampling.max_new_tokens (1024 -> 5)" in message
    assert "turns (2 -> 1; a run can be extended, not cut back)" in message and "limit (3 -> 2 problems" in message
    # A growth that comes with another change is refused too, naming only the change.
    with pytest.raises(HarnessError, match=r"settings: sampling.seed \(0 -> 1\); rerun"):
        execute_run(RunConfig(**base, limit=3, turns=3, seed=1), engine=ScriptedEngine(lambda c: "x"))


def _reply_by_turn(conversation):
    return f"attempt {(len(conversation) + 1) // 2}"


def test_more_turns_on_a_finished_run_generate_only_the_new_turn(tmp_path, math500_path):
    base = dict(data=str(math500_path), limit=3, output_dir=str(tmp_path), run_name="e")
    execute_run(RunConfig(**base), engine=ScriptedEngine(_reply_by_turn))
    engine = ScriptedEngine(_reply_by_turn)
    result = execute_run(RunConfig(**base, turns=3, resume=True), engine=engine)
    assert [len(call) for call in engine.calls] == [3] and all(len(c) == 5 for c in engine.calls[0])
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [[t["response"] for t in r["turns"]] for r in records] == [["attempt 1", "attempt 2", "attempt 3"]] * 3
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["run"]["turns"] == 3 and "acc_t3" in summary and "delta_t2_t3" in summary
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["settings"]["turns"] == 3 and config["extended"][0]["grown"] == ["turns 2 -> 3"]
    assert not (result.run_dir / "journal.jsonl").exists()


def test_a_larger_limit_adds_problems_and_more_samples_add_episodes(tmp_path, math500_path):
    base = dict(data=str(math500_path), output_dir=str(tmp_path), run_name="g", temperature=1.0)
    execute_run(RunConfig(**base, limit=2), engine=ScriptedEngine(_reply_by_turn))
    engine = ScriptedEngine(_reply_by_turn)
    execute_run(RunConfig(**base, limit=3), engine=engine)
    assert [len(call) for call in engine.calls] == [1, 1]  # turns 1 and 2 of the one new problem
    engine = ScriptedEngine(_reply_by_turn)
    result = execute_run(RunConfig(**base, limit=3, samples=2), engine=engine)
    assert [len(call) for call in engine.calls] == [3, 3]  # sample 1 of each problem, two turns
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["sample"] for r in records] == [0, 1] * 3
    assert result.summary["n"] == 6 and result.summary["run"]["samples"] == 2


def test_extending_a_greedy_run_to_three_turns_equals_a_three_turn_run(tmp_path, math500_path, tiny_model_dir):
    from harness.engines.hf import HFEngine

    engine = HFEngine.from_model(str(tiny_model_dir), batch_size=4)
    base = dict(data=str(math500_path), limit=6, max_new_tokens=10, run_name="t")
    execute_run(RunConfig(**base, turns=3, output_dir=str(tmp_path / "scratch")), engine=engine)
    execute_run(RunConfig(**base, turns=2, output_dir=str(tmp_path / "grown")), engine=engine)
    execute_run(RunConfig(**base, turns=3, output_dir=str(tmp_path / "grown"), resume=True), engine=engine)
    for name in ("samples.jsonl", "summary.json", "summary.md"):
        assert (tmp_path / "grown" / "t" / name).read_bytes() == (tmp_path / "scratch" / "t" / name).read_bytes(), name
    # summary.csv records each run's start date; every other column must match
    assert _without_date(tmp_path / "grown" / "t" / "summary.csv") == _without_date(
        tmp_path / "scratch" / "t" / "summary.csv"
    )


def test_resume_of_a_run_that_does_not_exist_lists_the_unfinished_runs(tmp_path, math500_path):
    execute_run(
        RunConfig(data=str(math500_path), limit=1, output_dir=str(tmp_path), run_name="done"),
        engine=ScriptedEngine(lambda c: "x"),
    )
    for name in ("b-run", "a-run"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    args = ["run", "--data", str(math500_path), "--limit", "1", "--output-dir", str(tmp_path), "--resume"]
    result = run_cli([*args, "--run-name", "a-rnu"], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --resume: there is no run 'a-rnu' in {tmp_path} (unfinished runs there: a-run, b-run); "
        "check --run-name and --output-dir, or drop --resume to start a new run"
    ]
    assert not (tmp_path / "a-rnu").exists()


class _FailsAtTurn(ScriptedEngine):
    """Answers until `turn`, then fails as a lost server does."""

    def __init__(self, turn):
        super().__init__(_reply_by_turn)
        self.turn = turn

    def chat(self, conversations, settings, on_done=None, seeds=None):
        if (len(conversations[0]) + 1) // 2 == self.turn:
            raise HarnessError("the server went away")
        return super().chat(conversations, settings, on_done, seeds)


def test_a_moved_checkout_resumes_and_a_finished_run_is_complete(tmp_path, math500_path, caplog):
    """The task file and the data file move (a new clone); the run's identity is their content."""
    import shutil

    from harness.tasks import load_task

    def checkout(name):
        root = tmp_path / name
        (root / "tasks").mkdir(parents=True)
        shutil.copy(load_task("math").source, root / "tasks" / "math.yaml")
        shutil.copy(math500_path, root / "math500.jsonl")
        return dict(task=str(root / "tasks" / "math.yaml"), data=str(root / "math500.jsonl"))

    out = dict(limit=2, output_dir=str(tmp_path / "results"), run_name="m")
    with pytest.raises(HarnessError, match="went away"):
        execute_run(RunConfig(**checkout("a"), **out), engine=_FailsAtTurn(2))
    engine = ScriptedEngine(_reply_by_turn)
    execute_run(RunConfig(**checkout("b"), **out, resume=True), engine=engine)
    assert [len(call) for call in engine.calls] == [2] and len(engine.calls[0][0]) == 3  # turn 2 only
    engine = ScriptedEngine(_reply_by_turn)
    with caplog.at_level("INFO", logger="score_eval"):
        again = execute_run(RunConfig(**checkout("c"), **out, resume=True), engine=engine)
    assert again.resumed and engine.calls == [] and "is already complete" in caplog.text


def test_a_run_that_fails_before_generating_anything_leaves_no_directory(tmp_path, math500_path):
    config = RunConfig(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name="f")
    with pytest.raises(HarnessError, match="went away"):
        execute_run(config, engine=_FailsAtTurn(1))
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_openai_server_is_one_line_and_leaves_no_run_directory(tmp_path, math500_path):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["run", "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m"]
    result = run_cli([*args, "--data", str(math500_path), "--limit", "1", "--output-dir", str(tmp_path)], timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the server at http://127.0.0.1:{port}/v1")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_the_journal_survives_and_resume_finishes_the_run(tmp_path, math500_path, monkeypatch):
    import errno

    base = dict(data=str(math500_path), limit=3, run_name="d")
    execute_run(RunConfig(**base, output_dir=str(tmp_path / "whole")), engine=ScriptedEngine(_reply_by_turn))
    real_append = Journal.append

    def append_until_the_disk_fills(self, events):
        events = list(events)
        if any(e["turn"] == 1 for e in events):  # the disk fills as turn 2 starts
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, events)

    monkeypatch.setattr(Journal, "append", append_until_the_disk_fills)
    config = RunConfig(**base, output_dir=str(tmp_path / "full"))
    with pytest.raises(HarnessError) as info:
        execute_run(config, engine=ScriptedEngine(_reply_by_turn))
    run_dir = tmp_path / "full" / "d"
    assert str(info.value) == (
        f"the disk holding {run_dir} is full (No space left on device); "
        "the finished work is saved: free space, then run the same command with --resume"
    )
    assert len(Journal(run_dir / "journal.jsonl").replay()) == 6  # three generations, three grades
    monkeypatch.setattr(Journal, "append", real_append)
    engine = ScriptedEngine(_reply_by_turn)
    execute_run(RunConfig(**base, output_dir=str(tmp_path / "full"), resume=True), engine=engine)
    assert [len(call) for call in engine.calls] == [3]  # turn 2 only
    for name in ("samples.jsonl", "summary.json"):
        assert (run_dir / name).read_bytes() == (tmp_path / "whole" / "d" / name).read_bytes()


def test_a_run_directory_in_use_is_refused(tmp_path, math500_path):
    from harness.store import open_run_dir

    config = RunConfig(data=str(math500_path), limit=1, output_dir=str(tmp_path), run_name="busy")
    with open_run_dir(str(tmp_path), "busy"):
        with pytest.raises(HarnessError, match="in use by another score-eval process"):
            execute_run(config, engine=ScriptedEngine(lambda c: "x"))
    assert execute_run(config, engine=ScriptedEngine(lambda c: "x")).summary["n"] == 1


def test_a_second_process_with_the_same_run_name_gets_one_line_and_exit_2(tmp_path, math500_path, tiny_model_dir):
    args = _run_args(math500_path, tiny_model_dir, tmp_path, "r", ["--limit", "200", "--max-new-tokens", "64"])
    first = start_cli(args)
    try:
        assert _wait_for(lambda: _journal_lines(tmp_path / "r") >= 2, first)
        second = run_cli(args)
        assert first.poll() is None  # the two really overlapped
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: run {tmp_path / 'r'} is in use by another score-eval process; "
            "wait for it to end, or choose another --run-name"
        ]
    finally:
        first.kill()
        first.communicate()
    from harness.store import require_not_in_use

    require_not_in_use(str(tmp_path), "r")  # the lock died with the killed process


def test_same_command_twice_writes_identical_samples(tmp_path, math500_path, tiny_model_dir):
    from harness.engines.hf import HFEngine

    engine = HFEngine.from_model(str(tiny_model_dir), batch_size=4)
    for temperature in (0.0, 1.0):
        paths = []
        for run in ("a", "b"):
            name = f"{run}-{temperature}"
            config = RunConfig(
                data=str(math500_path),
                limit=6,
                max_new_tokens=10,
                temperature=temperature,
                samples=2,
                seed=7,
                output_dir=str(tmp_path),
                run_name=name,
            )
            paths.append(execute_run(config, engine=engine).run_dir / "samples.jsonl")
        assert paths[0].read_bytes() == paths[1].read_bytes()
    # Sampling really samples: the two samples of a problem differ somewhere.
    records = [json.loads(line) for line in paths[0].read_text().splitlines()]
    assert any(records[i]["turns"][0]["response"] != records[i + 1]["turns"][0]["response"] for i in range(0, 12, 2))


def test_resumed_sampled_run_matches_an_uninterrupted_one(tmp_path, math500_path, tiny_model_dir):
    """hf samples each conversation from its own seed, so work redone after an interruption draws
    what the uninterrupted run drew, whatever else shares its batch."""
    from harness.engines.hf import HFEngine

    engine = HFEngine.from_model(str(tiny_model_dir), batch_size=4)

    class Interrupted(Exception):
        pass

    class StopsAfter:
        """Passes `limit` finished conversations through, then interrupts the run."""

        def __init__(self, limit):
            self.limit, self.name, self.model_name = limit, engine.name, engine.model_name

        def chat(self, conversations, settings, on_done=None, seeds=None):
            def done(i, completions):
                if self.limit == 0:
                    raise Interrupted
                self.limit -= 1
                on_done(i, completions)

            return engine.chat(conversations, settings, on_done=done, seeds=seeds)

        def describe(self):
            return engine.describe()

    def config(out, resume=False):
        return RunConfig(
            data=str(math500_path),
            limit=6,
            max_new_tokens=8,
            temperature=1.0,
            samples=2,
            seed=3,
            output_dir=str(out),
            run_name="s",
            resume=resume,
        )

    whole = execute_run(config(tmp_path / "whole"), engine=engine).run_dir / "samples.jsonl"
    with pytest.raises(Interrupted):
        execute_run(config(tmp_path / "cut"), engine=StopsAfter(5))
    resumed = execute_run(config(tmp_path / "cut", resume=True), engine=engine).run_dir / "samples.jsonl"
    assert resumed.read_bytes() == whole.read_bytes()


def test_regrade_keeps_old_verdicts_beside_new_ones(tmp_path, math500_path):
    answers = [json.loads(line)["answer"] for line in math500_path.read_text().splitlines()[:3]]
    replies = iter([RIGHT.format(answers[0]), "no answer", RIGHT.format(answers[2])] * 2)
    result = execute_run(
        RunConfig(data=str(math500_path), limit=3, output_dir=str(tmp_path), run_name="g"),
        engine=ScriptedEngine(lambda c: next(replies)),
    )
    samples = result.run_dir / "samples.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    records[0]["turns"][1]["correct"] = False  # pretend an older grader got this one wrong
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))

    out = run_cli(["regrade", str(result.run_dir)])
    assert out.returncode == 0, out.stderr
    regraded = [json.loads(line) for line in samples.read_text().splitlines()]
    assert regraded[0]["turns"][1] | {} == regraded[0]["turns"][1]
    assert regraded[0]["turns"][1]["correct"] is True
    assert regraded[0]["turns"][1]["previous"] == {"extracted": answers[0], "correct": False}
    assert regraded[1]["turns"][0]["previous"] == {"extracted": None, "correct": False}
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["counts"]["regrade_changed_t1"] == 0 and summary["counts"]["regrade_changed_t2"] == 1
    assert summary["acc_t2"] == 2 / 3


def test_extending_a_regraded_run_keeps_the_verdicts_before_the_regrade(tmp_path, math500_path):
    """A regraded run extended by one problem: its turns keep `previous` (an extension rebuilds
    samples.jsonl from journal lines, which dropped it before), and the new problem's turns have none."""
    from harness.regrade import regrade_run

    answers = [json.loads(line)["answer"] for line in math500_path.read_text().splitlines()[:3]]
    config = RunConfig(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name="x")
    run_dir = execute_run(config, engine=ScriptedEngine(lambda c: RIGHT.format(answers[0]))).run_dir
    samples = run_dir / "samples.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    records[0]["turns"][1]["correct"] = False  # pretend an older grader got this one wrong
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    regrade_run(run_dir)
    config.limit, config.resume = 3, True
    execute_run(config, engine=ScriptedEngine(lambda c: "no answer"))
    extended = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [[t.get("previous") for t in r["turns"]] for r in extended] == [
        [{"extracted": answers[0], "correct": True}, {"extracted": answers[0], "correct": False}],
        [{"extracted": answers[0], "correct": False}] * 2,  # problem 2 answered with problem 1's answer
        [None, None],
    ]
    assert [[t["correct"] for t in r["turns"]] for r in extended] == [[True, True], [False, False], [False, False]]


def test_regrade_refuses_a_run_in_use_and_creates_no_directory(tmp_path, math500_path):
    """Regrade writes samples.jsonl and the summaries, as a run extending the same directory does: it
    holds the run's lock, so the two never write together (it took no lock before). A directory that
    does not exist is reported, not made."""
    from harness.regrade import regrade_run
    from harness.store import open_run_dir

    config = RunConfig(data=str(math500_path), limit=1, output_dir=str(tmp_path), run_name="held")
    run_dir = execute_run(config, engine=ScriptedEngine(lambda c: "x")).run_dir
    before = (run_dir / "summary.json").read_bytes()
    with open_run_dir(str(tmp_path), "held"):
        with pytest.raises(HarnessError, match="in use by another score-eval process"):
            regrade_run(run_dir)
    assert (run_dir / "summary.json").read_bytes() == before
    assert regrade_run(run_dir)[1] == {"regrade_changed_t1": 0, "regrade_changed_t2": 0}
    with pytest.raises(HarnessError, match="is not a finished run"):
        regrade_run(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_prompt_too_long_skips_the_problem_and_counts_it(tmp_path, math500_path):
    class Overflowing(ScriptedEngine):
        def chat(self, conversations, settings, on_done=None, seeds=None):
            out = [
                [
                    Completion("", 9999, 0, PROMPT_TOO_LONG)
                    if "$(0,3)$" in c[0]["content"]
                    else Completion("x", 10, 1, "stop")
                ]
                for c in conversations
            ]
            for i, cs in enumerate(out):
                on_done(i, cs)
            return out

    result = execute_run(
        RunConfig(data=str(math500_path), limit=3, output_dir=str(tmp_path), run_name="s"), engine=Overflowing(None)
    )
    assert result.summary["n"] == 2 and result.summary["counts"]["skipped"] == 1
    first = json.loads((result.run_dir / "samples.jsonl").read_text().splitlines()[0])
    assert first["skipped"] == "turn 1: prompt longer than the model's context" and first["turns"] == []


def test_limit_beyond_the_data_is_allowed_with_a_note(tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text(
        "".join(json.dumps({"problem": f"q{i}", "answer": "1", "unique_id": str(i)}) + "\n" for i in range(2))
    )
    bad_model = tmp_path / "no-model"
    result = run_cli(
        [
            "run",
            "--data",
            str(data),
            "--limit",
            "5",
            "--model",
            str(bad_model),
            "--output-dir",
            str(tmp_path / "o"),
            "--run-name",
            "n",
        ]
    )
    # The note comes before the model is loaded; the (missing) model then ends the run.
    assert "note: --limit 5 is larger than the 2 problems in the data; using all of them" in result.stderr


def test_unwritable_output_directory_is_one_line(tmp_path, math500_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(
        [
            "run",
            "--data",
            str(math500_path),
            "--limit",
            "1",
            "--model",
            str(tmp_path / "nope"),
            "--output-dir",
            str(blocker),
        ],
        timeout=120,
    )
    assert result.returncode == 2
    config = RunConfig(data=str(math500_path), limit=1, output_dir=str(blocker), run_name="x")
    with pytest.raises(HarnessError, match="cannot write to output directory .*pass a writable --output-dir"):
        execute_run(config, engine=ScriptedEngine(lambda c: "x"))
    assert blocker.read_text() == ""


def test_model_without_chat_template_falls_back_with_a_warning(tiny_model_dir, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.engines.hf import HFEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with caplog.at_level("WARNING", logger="score_eval"):
        engine = HFEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, "plain")
    assert "has no chat template" in caplog.text
    assert engine.render([{"role": "user", "content": "hi"}]) == "User: hi\n\nAssistant: "


def test_where_a_run_runs_is_not_part_of_what_it_is():
    """Servers (as runs before several servers wrote them, and as now), GPUs per replica count and
    concurrency may change on resume; the engine's model options may not."""
    from harness.run import identity

    def config(**engine):
        return {"model": "m", "engine": engine, "task": {}, "data": {}, "sampling": {}}

    old = config(backend="openai", model="m", base_url="http://a:8000/v1", concurrency=8)
    new = config(backend="openai", model="m", servers=["http://b:8000/v1", "http://c:8000/v1"], concurrency=2)
    assert identity(old) == identity(new)
    one = config(backend="vllm", tensor_parallel_size=2, max_model_len=4096)
    assert identity(one) == identity({**one, "engine": {**one["engine"], "data_parallel_size": 4}})
    assert identity(one) != identity({**one, "engine": {**one["engine"], "max_model_len": 2048}})
