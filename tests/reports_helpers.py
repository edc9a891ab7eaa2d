"""Small real run directories for the report tests, made by `execute_run` with a scripted engine.

Each problem's text carries a tag like [p2]; the engine answers turn t of that problem with
PLANS[run][tag][t], phrased the way the MATH grader reads final answers. Nothing is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ScriptedEngine

# id: (subject, level, gold answer)
PROBLEMS = {
    "p1": ("Algebra", 1, "4"),
    "p2": ("Algebra", 2, "7"),
    "p3": ("Geometry", 2, "9"),
    "p4": ("Geometry", 3, "10"),
    "p5": ("Number Theory", 3, "12"),
    "p6": ("Number Theory", 5, "2"),
}

# Answers at turn 1 and turn 2; the comment is each episode's transition.
PLANS = {
    # base: c2c, i2c, c2i, i2i, c2i, i2i -> acc_t1 3/6, acc_t2 2/6, i2c 1, c2i 2
    "base": {
        "p1": ("4", "4"),
        "p2": ("5", "7"),
        "p3": ("9", "8"),
        "p4": ("3", "2"),
        "p5": ("12", "11"),
        "p6": ("1", "6"),
    },
    # trained: same turn-1 verdicts as base; c2c, i2c, c2c, i2c, c2c, i2c -> acc_t2 6/6, i2c 3, c2i 0
    "trained": {
        "p1": ("4", "4"),
        "p2": ("5", "7"),
        "p3": ("9", "9"),
        "p4": ("3", "10"),
        "p5": ("12", "12"),
        "p6": ("1", "2"),
    },
}


def response(answer: str, turn: int) -> str:
    return (
        f"Attempt {turn}: adding up the parts gives {answer}.\n"
        f"Final Answer: The final answer is ${answer}$. I hope it is correct."
    )


def write_problems(path: Path) -> Path:
    lines = [
        {"problem": f"[{pid}] What is the answer to problem {pid}?", "answer": gold, "subject": subject,
         "level": level, "unique_id": pid}
        for pid, (subject, level, gold) in PROBLEMS.items()
    ]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def make_run(tmp_path: Path, plan_name: str, run_name: str | None = None, turns: int = 2, **settings) -> Path:
    """Run the MATH task on PROBLEMS with PLANS[plan_name] (first `turns` turns); returns the run directory.

    `settings` are further RunConfig fields (temperature, max_new_tokens, limit, ...); the scripted
    engine answers the same whatever they are, so only the recorded settings differ."""
    from harness.config import RunConfig
    from harness.run import execute_run

    plan = PLANS[plan_name]
    data = tmp_path / "problems.jsonl"
    if not data.exists():
        write_problems(data)

    def reply(conversation):
        tag = next(pid for pid in plan if f"[{pid}]" in conversation[0]["content"])
        turn = sum(m["role"] == "assistant" for m in conversation)
        return response(plan[tag][turn], turn + 1)

    config = RunConfig(task="math", data=str(data), turns=turns, output_dir=str(tmp_path / "results"),
                       run_name=run_name or plan_name, **settings)  # fmt: skip
    return execute_run(config, engine=ScriptedEngine(reply)).run_dir


# A HumanEval-shaped episode: the canonical solution spans lines, turn 1 fails an assertion, turn 2 passes.
CANONICAL = (
    "    for i, a in enumerate(numbers):\n"
    "        for b in numbers[i + 1 :]:\n"
    "            if abs(a - b) < threshold:\n"
    "                return True\n"
    "    return False\n"
)
WRONG_PROGRAM = "def has_close_elements(numbers, threshold):\n    return False"
RIGHT_PROGRAM = "def has_close_elements(numbers, threshold):\n" + CANONICAL.rstrip("\n")
FAILED = "failed: assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"


def make_code_run(tmp_path: Path) -> Path:
    """A finished HumanEval run directory written from records, without a model or the sandbox."""
    from harness.run import finish_run

    run_dir = tmp_path / "code-run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps({"run_name": "code-run", "started": "2026-01-01T00:00:00+00:00", "task": {"grader": "humaneval"},
                    "settings": {"task": "humaneval", "turns": 2}})
    )  # fmt: skip

    def turn(program: str, correct: bool, detail: str) -> dict:
        return {"response": f"Here it is:\n```python\n{program}\n```", "extracted": program, "correct": correct,
                "finish_reason": "stop", "completion_tokens": 30, "detail": detail}  # fmt: skip

    record = {"id": "HumanEval/0", "sample": 0, "answer": CANONICAL,
              "turns": [turn(WRONG_PROGRAM, False, FAILED), turn(RIGHT_PROGRAM, True, "passed")]}  # fmt: skip
    info = {"name": "code-run", "task": "humaneval", "model": "scripted", "backend": "scripted", "turns": 2,
            "samples": 1, "problems": 1, "temperature": 0.0, "top_p": 1.0}  # fmt: skip
    finish_run(run_dir, [record], info)
    return run_dir
