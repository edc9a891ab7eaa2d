"""The exact-integer grader of generated arithmetic: an answer counts only as a computed integer."""

from __future__ import annotations

import pytest

from harness.data import Problem
from harness.errors import HarnessError
from harness.grading import get_grader
from harness.grading.integer import integer_value
from harness.tasks import load_task


def grade(responses: list[str], answer: str) -> list[tuple[str | None, bool]]:
    problem = Problem("p", answer, {"problem": "x", "answer": answer})
    grader = get_grader(load_task("arithmetic").grader)
    return [(v.extracted, v.correct) for v in grader.grade([(r, problem) for r in responses])]


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("14", 14),
        ("-17", -17),
        ("−17", -17),  # U+2212, as LaTeX-to-Unicode output writes it
        ("$24$", 24),
        ("24.", 24),
        ('"8"', 8),  # the base model's "The answer is "8"." (benchmarks/score_demo.py, DIR/base)
        ("**8**", 8),
        ("“8”", 8),
        ("1,234", 1234),
        ("20 - 6 = 14", 14),
        ("x = -3", -3),
        ("3 + 21", None),  # an expression, not a result
        ("20 - 6", None),
        ("24 or 25", None),
        ("12,34", None),  # not a thousands grouping
        ("2.5", None),
        ("", None),
    ],
)
def test_an_answer_is_its_integer_literal_or_nothing(answer, value):
    assert integer_value(answer) == value


def test_restating_the_question_is_not_an_answer():
    # Second attempts of the SCoRe model in benchmarks/score_demo.py's first run (samples.jsonl of
    # DIR/stage2, problems test-00001 and test-00008): the math grader counted "3 + 21" as 24.
    assert grade(["3 + 21 = 54\n\nAnswer: 3 + 21", "3 + 21 = 54", "Answer: 3 + 21 = 24"], "24") == [
        ("3 + 21", False),
        ("3 + 21 = 54", False),
        ("3 + 21 = 24", True),
    ]
    assert grade(["20 - 6 = 14\nAnswer: 20 - 6 = 14", "The answer is 20. So 14", "Answer: $14$."], "14") == [
        ("20 - 6 = 14", True),
        ("20", False),  # a statement wins over later numbers
        ("14", True),
    ]


def test_a_wrong_non_integer_answer_says_so_and_a_non_integer_gold_answer_is_refused():
    problem = Problem("p", "24", {"problem": "x", "answer": "24"})
    grader = get_grader("integer")
    assert grader.grade([("Answer: 3 + 21", problem)])[0].detail == "not an integer"
    assert grader.grade([("no numbers here", problem)])[0] == grader.grade([("", problem)])[0]
    with pytest.raises(HarnessError, match="integer gold answer"):
        grader.grade([("1", Problem("q", "1/2", {"problem": "x", "answer": "1/2"}))])
