"""The labelled MATH pairs (tests/data/math_grading_labels.yaml) are the grader's specification.

Each entry names its reason; a failure here prints it. Every pair is graded in-process (the
decision functions), and the whole set once more through the registered grader's worker pool,
which must give the same verdicts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.data import Problem
from harness.grading import get_grader
from harness.grading.math import extract_answers, grade_math_answer

LABELS = Path(__file__).parent / "data" / "math_grading_labels.yaml"
SECTIONS: dict[str, list[dict]] = yaml.safe_load(LABELS.read_text())
CASES = [(f"{category}-{n}", entry) for category, entries in SECTIONS.items() for n, entry in enumerate(entries)]


def response_of(entry: dict) -> str:
    return entry["response"] if "response" in entry else f"The final answer is $\\boxed{{{entry['given']}}}$."


def test_the_labelled_set_is_large_and_covers_both_directions():
    # The issue asks for hundreds of pairs, right and near-miss, in every category.
    assert len(CASES) >= 300
    for category, entries in SECTIONS.items():
        labels = {e["correct"] for e in entries}
        assert labels == {True, False}, f"{category} lacks a {'right' if False in labels else 'near-miss'} pair"
        assert all(e.get("why") for e in entries), f"{category} has a pair without a reason"


@pytest.mark.parametrize("entry", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_labelled_pair(entry: dict):
    readings = extract_answers(response_of(entry))
    if "extracted" in entry:
        assert (readings[0] if readings else None) == entry["extracted"], entry["why"]
    correct = any(grade_math_answer(r, entry["gold"], entry.get("problem")) for r in readings)
    assert correct is entry["correct"], entry["why"]


def test_the_registered_grader_agrees_with_every_label_through_its_worker_pool():
    items = [
        (response_of(e), Problem(name, e["gold"], {"problem": e["problem"]} if "problem" in e else {}))
        for name, e in CASES
    ]
    grader = get_grader("math")
    try:
        verdicts = grader.grade(items)
    finally:
        grader.close()
    wrong = [name for (name, e), v in zip(CASES, verdicts) if v.correct is not e["correct"]]
    assert wrong == []
    assert all(v.detail is None for v in verdicts)  # no timeouts or errors on honest answers
