"""Generated tasks: exact answers, the same problems on every call, and a held-out split that
training never sees."""

from __future__ import annotations

import random

import pytest

from harness.data import load_problems
from harness.errors import HarnessError
from harness.generators import _evaluate, arithmetic, generate
from harness.tasks import load_task


@pytest.mark.parametrize(
    ("numbers", "ops", "value"),
    [
        ([3, 4, 5], ["+", "*"], 23),  # 3 + 4·5: × before +
        ([10, 2, 3], ["-", "-"], 5),  # left to right: (10 − 2) − 3
        ([2, 3, 4, 5], ["*", "+", "*"], 26),  # 2·3 + 4·5
        ([4, 9, 2], ["-", "*"], -14),  # 4 − 9·2
    ],
)
def test_expressions_are_evaluated_with_the_usual_precedence(numbers, ops, value):
    assert _evaluate(numbers, ops) == value


def test_a_generated_problem_states_the_expression_its_answer_evaluates():
    record = arithmetic(random.Random(0), operands=4, low=2, high=9)
    assert len(record["problem"].split()) == 7  # 4 numbers, 3 operators
    assert record["answer"] == str(eval(record["problem"]))  # Python's own arithmetic, as a second opinion


def test_splits_are_repeatable_and_the_held_out_split_is_disjoint_from_training():
    spec = {"name": "arithmetic", "seed": 7, "splits": {"test": 50, "train": 400}, "options": {"high": 9}}
    test, digest = generate(spec, "test")
    train, _ = generate(spec, "train")
    assert generate(spec, "test") == (test, digest)  # a pure function of the spec
    assert len(test) == 50 and len(train) == 400
    assert not {r["problem"] for r in test} & {r["problem"] for r in train}
    assert len({r["problem"] for r in train}) == 400
    bigger, _ = generate({**spec, "splits": {"test": 50, "train": 800}}, "test")
    assert bigger == test  # growing the training split leaves the held-out one alone
    with pytest.raises(HarnessError, match="no split 'dev'"):
        generate(spec, "dev")


def test_the_arithmetic_task_loads_its_held_out_split_by_default_and_its_training_split_on_request():
    task = load_task("arithmetic")
    test, source = load_problems(task, None, limit=10)
    train, train_source = load_problems(task, None, limit=10, split="train")
    assert (source.kind, source.location, len(test)) == ("generator", "arithmetic:test", 10)
    assert train_source.location == "arithmetic:train" and train[0].id.startswith("train-")
    assert test[0].answer == str(eval(test[0].fields["problem"]))


def test_the_arithmetic_task_grades_a_stated_integer_or_else_the_last_number():
    from harness.data import Problem
    from harness.grading import get_grader

    grader = get_grader(load_task("arithmetic").grader)
    problem = Problem("p", "21", {"problem": "22 - 1", "answer": "21"})
    responses = ["22 - 1 = 21", "Answer: 21. Check: 22 - 1 = 20", "22 - 1 = 20", "The answer is 20. So 21"]
    try:
        verdicts = grader.grade([(r, problem) for r in responses])
    finally:
        grader.close()
    # A bare formula is its own answer and states its last value (the MATH grader's reading, issue #12);
    # a statement wins over later numbers.
    assert [(v.extracted, v.correct) for v in verdicts] == [
        ("22 - 1 = 21", True),
        ("21", True),
        ("22 - 1 = 20", False),
        ("20", False),
    ]
