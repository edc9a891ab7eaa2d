"""Red team of a run directory's hygiene: the finished run's leftover journal (run._continue), the
startup sweep of temporary files (store.open_run_dir), regrade under the run's lock, and `previous`
kept through an extension. Each test states what must never be lost or left behind."""

import json
import os
from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.errors import HarnessError
from harness.regrade import regrade_run
from harness.run import execute_run
from harness.store import JOURNAL, Journal
from tests.conftest import ScriptedEngine, run_cli
from tests.test_resume import _FailsAtTurn, _reply_by_turn

RIGHT = "Final Answer: The final answer is ${}$. I hope it is correct."


@pytest.fixture(scope="module")
def math500_path():
    from tests.conftest import MATH500, require_shared

    return require_shared(MATH500)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def _answers(math500_path, n):
    return [json.loads(line)["answer"] for line in math500_path.read_text().splitlines()[:n]]


class _Fails(ScriptedEngine):
    """Fails on its first call, as an unreachable server does."""

    def __init__(self):
        super().__init__(_reply_by_turn)

    def chat(self, conversations, settings, on_done=None, seeds=None):
        raise HarnessError("the server went away")


# --- a failed first run never removes what it did not make -------------------------------------


def test_a_first_run_that_fails_in_a_directory_the_user_made_keeps_the_users_files(tmp_path, math500_path):
    """A run name may name a folder that already exists without run files (the user made it, kept a
    task file or notes there). A run that fails before generating removed the whole folder with
    shutil.rmtree, the user's files included; it must remove only what it wrote."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub").mkdir()
    (mine / "sub" / "task.yaml").write_text("keep me too")
    config = RunConfig(data=str(math500_path), limit=1, output_dir=str(tmp_path), run_name="mine")
    with pytest.raises(HarnessError, match="went away"):
        execute_run(config, engine=_Fails())
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == ["notes.txt", "sub", "sub/task.yaml"]


def test_a_first_run_that_fails_in_a_new_directory_still_leaves_nothing(tmp_path, math500_path):
    config = RunConfig(data=str(math500_path), limit=1, output_dir=str(tmp_path / "deep" / "out"), run_name="n")
    with pytest.raises(HarnessError, match="went away"):
        execute_run(config, engine=_Fails())
    assert list((tmp_path / "deep" / "out").iterdir()) == []


# --- the finished run's leftover journal ----------------------------------------------------------


def test_a_leftover_journal_beside_summary_json_goes_and_the_results_stay(tmp_path, math500_path):
    """A stop between summary.json and the journal's removal leaves the whole journal: a rerun
    removes it, and samples.jsonl and the summaries are untouched."""
    base = dict(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name="j")
    run_dir = execute_run(RunConfig(**base), engine=ScriptedEngine(_reply_by_turn)).run_dir
    before = {n: (run_dir / n).read_bytes() for n in ("samples.jsonl", "summary.json", "summary.md", "config.json")}
    from harness.episodes import journal_events

    Journal(run_dir / JOURNAL).append(e for r in _records(run_dir) for e in journal_events(r))
    engine = ScriptedEngine(_reply_by_turn)
    assert execute_run(RunConfig(**base, resume=True), engine=engine).resumed
    assert engine.calls == [] and not (run_dir / JOURNAL).exists()
    assert {n: (run_dir / n).read_bytes() for n in before} == before


@pytest.mark.parametrize("stop", ["before summary.json goes", "before config.json is rewritten"])
def test_an_extension_stopped_inside_continue_loses_nothing(tmp_path, math500_path, monkeypatch, stop):
    """`_continue` writes the journal, removes summary.json, then rewrites config.json. A stop
    between any two: the original command finds the run as it was, the larger one extends it."""
    import harness.run as run_module

    base = dict(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name="c")
    run_dir = execute_run(RunConfig(**base), engine=ScriptedEngine(_reply_by_turn)).run_dir
    original = _records(run_dir)

    class Stop(BaseException):
        pass

    if stop == "before summary.json goes":
        real_unlink = Path.unlink

        def unlink(self, *args, **kwargs):
            if self.name == "summary.json":
                raise Stop
            return real_unlink(self, *args, **kwargs)

        monkeypatch.setattr(Path, "unlink", unlink)
    else:
        real_write_json = run_module.write_json

        def write_json(path, obj):
            if path.name == "config.json" and "extended" in obj:
                raise Stop
            return real_write_json(path, obj)

        monkeypatch.setattr(run_module, "write_json", write_json)
    with pytest.raises(Stop):
        execute_run(RunConfig(**base, turns=3, resume=True), engine=ScriptedEngine(_reply_by_turn))
    monkeypatch.undo()
    assert (run_dir / JOURNAL).exists()

    engine = ScriptedEngine(_reply_by_turn)
    result = execute_run(RunConfig(**base, resume=True), engine=engine)
    assert engine.calls == [] and _records(run_dir) == original and result.summary["run"]["turns"] == 2
    assert not (run_dir / JOURNAL).exists()
    engine = ScriptedEngine(_reply_by_turn)
    result = execute_run(RunConfig(**base, turns=3, resume=True), engine=engine)
    assert [len(call) for call in engine.calls] == [2]  # turn 3 of both problems, nothing redone
    assert [[t["response"] for t in r["turns"]] for r in _records(run_dir)] == [
        ["attempt 1", "attempt 2", "attempt 3"]
    ] * 2
    assert result.summary["run"]["turns"] == 3 and not (run_dir / JOURNAL).exists()


def test_an_unfinished_run_extended_to_more_turns_equals_an_uninterrupted_one(tmp_path, math500_path):
    """Stopped at turn 2 of 2, then run with --turns 3: turn 1 is not redone, and the result is the
    three-turn run's, with no journal left."""
    base = dict(data=str(math500_path), limit=2, run_name="u")
    whole = execute_run(
        RunConfig(**base, turns=3, output_dir=str(tmp_path / "whole")), engine=ScriptedEngine(_reply_by_turn)
    )
    out = str(tmp_path / "cut")
    with pytest.raises(HarnessError, match="went away"):
        execute_run(RunConfig(**base, output_dir=out), engine=_FailsAtTurn(2))
    assert (Path(out) / "u" / JOURNAL).exists() and not (Path(out) / "u" / "summary.json").exists()
    engine = ScriptedEngine(_reply_by_turn)
    result = execute_run(RunConfig(**base, turns=3, output_dir=out, resume=True), engine=engine)
    assert [len(call) for call in engine.calls] == [2, 2]  # turns 2 and 3 only
    assert _records(result.run_dir) == _records(whole.run_dir)
    assert result.summary["run"] == whole.summary["run"] and not (result.run_dir / JOURNAL).exists()


# --- the sweep of temporary files -----------------------------------------------------------------


def test_the_sweep_removes_only_a_run_files_temporaries(tmp_path, math500_path):
    """Removed: atomic_write_text's temporaries of the run's own files. Kept: report's report.html
    temporary (report writes without the lock), the user's files that merely look alike, folders."""
    base = dict(data=str(math500_path), limit=1, output_dir=str(tmp_path), run_name="s")
    run_dir = execute_run(RunConfig(**base), engine=ScriptedEngine(_reply_by_turn)).run_dir
    ours = [f".{n}.0123456789ab.tmp" for n in ("samples.jsonl", "summary.json", "config.json", JOURNAL)]
    kept = [
        ".report.html.0123456789ab.tmp",
        ".samples.jsonl.tmp",
        ".samples.jsonl.0123456789AB.tmp",  # upper case: token_hex never writes it
        ".samples.jsonl.0123456789abc.tmp",
        "samples.jsonl.0123456789ab.tmp",
        ".samples.jsonl.0123456789ab.tmp.bak",
        ".report.md.0123456789ab.tmp",
        "notes.txt",
    ]
    for name in ours + kept:
        (run_dir / name).write_text("x")
    (run_dir / ".summary.csv.0123456789ab.tmp").mkdir()  # not a file: left alone, no crash
    before = (run_dir / "samples.jsonl").read_bytes()
    execute_run(RunConfig(**base, resume=True), engine=ScriptedEngine(_reply_by_turn))
    left = {p.name for p in run_dir.iterdir()}
    assert not left & set(ours)
    assert set(kept) | {".summary.csv.0123456789ab.tmp"} <= left
    assert (run_dir / "samples.jsonl").read_bytes() == before


def test_a_run_in_use_is_not_swept_by_a_second_opener(tmp_path, math500_path):
    """A second process that is refused the lock must not remove the first one's temporary files."""
    from harness.store import open_run_dir

    with open_run_dir(str(tmp_path), "held") as (run_dir, _):
        tmp = run_dir / ".samples.jsonl.0123456789ab.tmp"
        tmp.write_text("being written")
        with pytest.raises(HarnessError, match="in use"):
            with open_run_dir(str(tmp_path), "held"):
                pass
        with pytest.raises(HarnessError, match="in use"):
            regrade_run(run_dir)
        assert tmp.read_text() == "being written"


# --- regrade on odd paths -------------------------------------------------------------------------


def _finished(tmp_path, math500_path, name="r"):
    config = RunConfig(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name=name)
    return execute_run(config, engine=ScriptedEngine(_reply_by_turn)).run_dir


@pytest.mark.parametrize("how", ["dot", "trailing slash", "symlink", "relative"])
def test_regrade_takes_a_run_however_its_path_is_written(tmp_path, math500_path, monkeypatch, how):
    run_dir = _finished(tmp_path, math500_path)
    if how == "dot":
        monkeypatch.chdir(run_dir)
        arg = Path(".")
    elif how == "trailing slash":
        arg = Path(str(run_dir) + "/")
    elif how == "symlink":
        (tmp_path / "link").symlink_to(run_dir)
        arg = tmp_path / "link"
    else:
        monkeypatch.chdir(tmp_path)
        arg = Path("r")
    document, changed = regrade_run(arg)
    assert changed == {"regrade_changed_t1": 0, "regrade_changed_t2": 0}
    assert document["counts"]["regrade_changed_t1"] == 0
    assert all("previous" in t for r in _records(run_dir) for t in r["turns"])
    assert sorted(p.name for p in tmp_path.iterdir()) == (["link", "r"] if how == "symlink" else ["r"])


def test_regrade_of_a_run_held_through_a_symlink_is_refused(tmp_path, math500_path):
    """The lock is on the directory itself, so a symlink to a run in use is refused too."""
    from harness.store import open_run_dir

    run_dir = _finished(tmp_path, math500_path)
    (tmp_path / "link").symlink_to(run_dir)
    with open_run_dir(str(tmp_path), "r"):
        with pytest.raises(HarnessError, match="in use"):
            regrade_run(tmp_path / "link")


def test_regrade_of_a_folder_that_is_not_a_run_changes_nothing_in_it(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(HarnessError, match="is not a finished run"):
        regrade_run(folder)
    assert [p.name for p in folder.iterdir()] == ["a.txt"]
    with pytest.raises(HarnessError, match="is not a finished run"):
        regrade_run(folder / "a.txt")


def test_regrade_of_a_read_only_run_names_a_fix_regrade_has_and_changes_nothing(tmp_path, math500_path, monkeypatch):
    """Simulated (root writes to read-only folders): the write probe fails as on a read-only run.
    The error named `run`'s fix (--output-dir), which regrade has no option for."""
    run_dir = _finished(tmp_path, math500_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == ".write-test":
            raise PermissionError(13, "Permission denied")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(HarnessError) as error:
        regrade_run(run_dir)
    message = str(error.value)
    assert str(run_dir) in message and "Permission denied" in message and "--output-dir" not in message
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_regrade_of_a_run_in_use_names_no_run_name_option(tmp_path, math500_path):
    from harness.store import open_run_dir

    run_dir = _finished(tmp_path, math500_path)
    with open_run_dir(str(tmp_path), "r"):
        with pytest.raises(HarnessError, match="in use by another score-eval process") as error:
            regrade_run(run_dir)
    assert "--run-name" not in str(error.value)


@pytest.mark.parametrize("damage", ["no config.json", "config.json unreadable"])
def test_regrade_never_advises_removing_a_run_it_cannot_read(tmp_path, math500_path, damage):
    """A finished run whose config.json is missing or damaged cannot be regraded; the error must
    not tell the user to remove the directory, which holds samples.jsonl and the summaries."""
    run_dir = _finished(tmp_path, math500_path)
    if damage == "no config.json":
        (run_dir / "config.json").unlink()
    else:
        (run_dir / "config.json").write_text("{torn")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(HarnessError) as error:
        regrade_run(run_dir)
    assert "remove" not in str(error.value) and "config.json" in str(error.value)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


# --- previous through regrade, extension, regrade -------------------------------------------------


def test_regrade_extend_regrade_keeps_counts_and_previous_consistent(tmp_path, math500_path):
    """previous is the verdict before the latest regrade; a turn added by an extension has none
    until the next regrade; every summary counts every turn of every record."""
    answers = _answers(math500_path, 2)
    base = dict(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name="x")
    run_dir = execute_run(RunConfig(**base), engine=ScriptedEngine(lambda c: RIGHT.format(answers[0]))).run_dir
    records = _records(run_dir)
    records[0]["turns"][0]["correct"] = False  # an older grader's mistake
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert regrade_run(run_dir)[1] == {"regrade_changed_t1": 1, "regrade_changed_t2": 0}

    extended = execute_run(RunConfig(**base, turns=3, resume=True), engine=ScriptedEngine(lambda c: "none")).summary
    assert extended["run"]["turns"] == 3 and extended["n"] == 2
    assert extended["acc_t1"] == 0.5 and extended["acc_t3"] == 0.0
    after = _records(run_dir)
    assert [t.get("previous") for t in after[0]["turns"]] == [
        {"extracted": answers[0], "correct": False},
        {"extracted": answers[0], "correct": True},
        None,
    ]

    document, changed = regrade_run(run_dir)
    assert changed == {"regrade_changed_t1": 0, "regrade_changed_t2": 0, "regrade_changed_t3": 0}
    again = _records(run_dir)
    assert [t["previous"] for t in again[0]["turns"]] == [
        {"extracted": answers[0], "correct": True},
        {"extracted": answers[0], "correct": True},
        {"extracted": after[0]["turns"][2]["extracted"], "correct": False},
    ]
    assert document["acc_t1"] == 0.5 and document["acc_t3"] == 0.0 and document["n"] == 2


def test_an_old_journal_without_previous_resumes_without_inventing_one(tmp_path, math500_path):
    """A journal written before `previous` existed: its grade lines have neither previous nor
    (for a turn with no note) detail; the run resumes from them and writes no previous."""
    base = dict(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name="o")
    run_dir = execute_run(RunConfig(**base), engine=ScriptedEngine(_reply_by_turn)).run_dir
    whole = _records(run_dir)
    lines = []
    for r in whole[:1]:  # only the first problem was done when it stopped
        for t, turn in enumerate(r["turns"]):
            key = {"id": r["id"], "sample": r["sample"], "turn": t}
            lines.append({**key, **{k: turn[k] for k in ("response", "finish_reason", "completion_tokens")}})
            lines.append({**key, "grade": {"extracted": turn["extracted"], "correct": turn["correct"]}})
    (run_dir / "summary.json").unlink()
    (run_dir / JOURNAL).write_text("".join(json.dumps(e) + "\n" for e in lines))
    engine = ScriptedEngine(_reply_by_turn)
    execute_run(RunConfig(**base, resume=True), engine=engine)
    assert [len(call) for call in engine.calls] == [1, 1]  # the second problem only
    assert _records(run_dir) == whole and not any("previous" in t for r in whole for t in r["turns"])


def test_reports_read_a_regraded_extended_run(tmp_path, math500_path):
    """show, the HTML page and compare take a run whose turns have previous on some turns only."""
    from harness.reports.compare import write_report
    from harness.reports.show import show_run

    answers = _answers(math500_path, 2)
    base = dict(data=str(math500_path), output_dir=str(tmp_path / "runs"), run_name="x")
    run_dir = execute_run(RunConfig(**base, limit=2), engine=ScriptedEngine(lambda c: RIGHT.format(answers[0]))).run_dir
    regrade_run(run_dir)
    execute_run(RunConfig(**base, limit=3, resume=True), engine=ScriptedEngine(lambda c: "none"))
    from rich.console import Console

    assert show_run(run_dir, Console(file=open(os.devnull, "w")), limit=None) == 3
    files = write_report([run_dir], output=tmp_path / "report.md")
    assert files.html and files.html[0].exists() and (tmp_path / "report.md").exists()
    out = run_cli(["show", str(run_dir)])
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("stop_in", ["write_run_summaries", "write_jsonl"])
def test_a_regrade_stopped_before_it_is_complete_and_run_again_keeps_the_original_verdicts(
    tmp_path, math500_path, monkeypatch, stop_in
):
    """A regrade stopped while writing its summaries or samples.jsonl, then run again: the run still
    looks finished (summary.json is there), and the original verdicts must end as `previous` with
    the change counted. When regrade wrote samples.jsonl first, a stop before the summaries made
    the first try's verdicts `previous` on the second (this test failed); now samples.jsonl is
    written last."""
    import harness.regrade as regrade_module

    answers = _answers(math500_path, 2)
    run_dir = execute_run(
        RunConfig(data=str(math500_path), limit=2, output_dir=str(tmp_path), run_name="w"),
        engine=ScriptedEngine(lambda c: RIGHT.format(answers[0])),
    ).run_dir
    records = _records(run_dir)
    records[0]["turns"][0]["correct"] = False  # an older grader's mistake
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    class Stop(BaseException):
        pass

    def stopped(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(regrade_module, stop_in, stopped)
    with pytest.raises(Stop):
        regrade_run(run_dir)
    monkeypatch.undo()
    document, changed = regrade_run(run_dir)
    assert _records(run_dir)[0]["turns"][0]["previous"]["correct"] is False
    assert changed["regrade_changed_t1"] == 1
    assert document["counts"]["regrade_changed_t1"] == 1
