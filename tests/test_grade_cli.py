"""`score-eval grade --task math IN.jsonl --output OUT.jsonl`, run as a user would."""

from __future__ import annotations

import json

from harness.data import Problem
from harness.grade import grade_file
from harness.grading import Verdict
from tests.conftest import run_cli

RECORDS = [
    {"id": "a", "response": r"So $\boxed{10.0}$.", "answer": "10", "model": "m1"},  # trailing zero: right
    {"id": "b", "response": "I could not solve it.", "answer": "3", "turn": 2},  # no answer: wrong, null
    {"id": "c", "response": r"The answer is $\sqrt{27}$.", "answer": r"3\sqrt{3}"},  # radical: right (sympy)
    {"id": "d", "response": r"$\boxed{(1,2]}$", "answer": "[1,2)"},  # brackets swapped: wrong (sympy)
]


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_grade_writes_the_same_records_in_order_with_extracted_and_correct(tmp_path):
    write(tmp_path / "in.jsonl", RECORDS)
    result = run_cli(["grade", "--task", "math", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == ["a", "b", "c", "d"]
    assert [r["extracted"] for r in out] == ["10.0", None, r"\sqrt{27}", "(1,2]"]
    assert [r["correct"] for r in out] == [True, False, True, False]
    assert out[0]["model"] == "m1" and out[1]["turn"] == 2  # extra fields pass through
    assert all("detail" not in r for r in out)  # no timeouts here
    # One summary line: 2 of 4 correct, 1 response with no final answer.
    assert result.stdout.strip().splitlines() == [
        f"graded 4 responses: 2 correct (50.0%), 1 without a final answer, 0 timed out; wrote {tmp_path / 'out.jsonl'}"
    ]


def test_grade_explains_a_record_without_a_response(tmp_path):
    write(tmp_path / "in.jsonl", [RECORDS[0], {"id": "b", "answer": "1"}])
    result = run_cli(["grade", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    assert result.returncode == 2
    assert "line 2 lacks 'response'" in result.stderr  # the file's line, for the user to find it
    assert not (tmp_path / "out.jsonl").exists()


def test_grade_explains_a_missing_input_file(tmp_path):
    result = run_cli(["grade", str(tmp_path / "absent.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    assert result.returncode == 2
    assert "does not exist" in result.stderr


class CountingGrader:
    """Records what it was asked, to show that `grade` hands the grader the records as Problems."""

    def __init__(self):
        self.items = []

    def grade(self, items):
        self.items = list(items)
        return [Verdict("x", True, "timeout" if i == 1 else None) for i, _ in enumerate(items)]


def test_grade_counts_timeouts_and_passes_each_record_as_the_problem(tmp_path):
    write(tmp_path / "in.jsonl", RECORDS[:2])
    grader = CountingGrader()
    summary = grade_file("math", tmp_path / "in.jsonl", tmp_path / "out.jsonl", grader=grader)
    assert summary.timeouts == 1 and summary.graded == 2
    response, problem = grader.items[0]
    assert response == RECORDS[0]["response"]
    assert isinstance(problem, Problem) and problem.id == "a" and problem.answer == "10"
    assert problem.fields["model"] == "m1"
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out[1]["detail"] == "timeout" and "detail" not in out[0]
