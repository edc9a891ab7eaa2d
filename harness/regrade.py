"""`score-eval regrade RUN_DIR`: grade stored responses again with the current grader.

Nothing is generated. Each turn keeps its old verdict under `previous` so a user can see what the
new grader changed; the summaries are rewritten and count the changes per turn.
"""

from __future__ import annotations

from pathlib import Path

from harness.data import ALL, load_problems
from harness.errors import HarnessError
from harness.grading import get_grader
from harness.run import write_run_summaries
from harness.store import LockErrors, locked_run_dir, read_json, read_jsonl, write_jsonl
from harness.tasks import load_task

REGRADE_ERRORS = LockErrors(
    "cannot write to {path} ({error}); make it writable to regrade the run",
    "run {path} is in use by another score-eval process; wait for it to end, then regrade it",
)


def regrade_run(run_dir: Path) -> tuple[dict, dict[str, int]]:
    """Return the new summary document and the number of changed verdicts per turn. The run is held
    locked, as `run` holds it, so a run extending it meanwhile and this never both write its files."""
    finished = HarnessError(
        f"{run_dir} is not a finished run (no summary.json); finish it with `score-eval run ... --resume` first"
    )
    if not run_dir.is_dir():
        raise finished
    with locked_run_dir(run_dir, REGRADE_ERRORS):
        if not (run_dir / "summary.json").is_file():
            raise finished
        return _regrade(run_dir)


def _run_config(run_dir: Path) -> dict:
    """config.json names the task and data the responses answer; without it nothing can be regraded
    (and the run's results are still good: nothing here suggests removing them)."""
    try:
        return read_json(run_dir / "config.json")
    except FileNotFoundError as exc:
        raise HarnessError(
            f"{run_dir} has no config.json (it names the task and data to regrade against); restore it from a copy"
        ) from exc
    except (OSError, ValueError) as exc:
        raise HarnessError(
            f"{run_dir}/config.json is unreadable ({exc}); it names the task and data to regrade against: "
            "restore it from a copy"
        ) from exc


def _regrade(run_dir: Path) -> tuple[dict, dict[str, int]]:
    config, old = _run_config(run_dir), read_json(run_dir / "summary.json")
    source = config["task"].get("source") or ""
    task = load_task(source if Path(source).is_file() else config["task"]["name"])
    data = config["data"]
    # Responses are matched to problems by id, so a local file is read whole; the hub or a generator
    # gives the run's split.
    whole_file = data["kind"] == "file"
    problems, now = load_problems(
        task, data["location"] if whole_file else None, split=ALL if whole_file else data.get("split")
    )
    if now.sha256 != data["sha256"]:
        raise HarnessError(
            f"the data at {data['location']} changed since the run (sha256 differs); restore the original file"
        )
    by_id = {p.id: p for p in problems}
    records = read_jsonl(run_dir / "samples.jsonl")
    cells = [(r, t, turn) for r in records for t, turn in enumerate(r["turns"], start=1)]
    grader = get_grader(task.grader)
    try:
        verdicts = grader.grade([(turn["response"], by_id[r["id"]]) for r, _, turn in cells])
    finally:
        grader.close()
    changed = {f"regrade_changed_t{t}": 0 for t in range(1, old["run"]["turns"] + 1)}
    for (_, t, turn), verdict in zip(cells, verdicts):
        previous = {"extracted": turn["extracted"], "correct": turn["correct"]}
        if turn.get("detail") is not None:
            previous["detail"] = turn.pop("detail")
        turn.update(extracted=verdict.extracted, correct=verdict.correct, previous=previous)
        if verdict.detail is not None:
            turn["detail"] = verdict.detail
        if verdict.correct != previous["correct"]:
            changed[f"regrade_changed_t{t}"] += 1
    # The summaries first, samples.jsonl last: the old verdicts stay in samples.jsonl until this
    # regrade is complete, so a regrade stopped before that and run again keeps them as `previous`
    # (written first, the first try's verdicts became `previous` and the originals were lost).
    document = write_run_summaries(run_dir, records, old["run"], extra_counts=changed)
    write_jsonl(run_dir / "samples.jsonl", records)
    return document, changed
