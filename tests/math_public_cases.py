"""Public graders' labelled MATH cases (tests/data/math_public_cases.jsonl) and the rules for counting them.

Shared by tests/test_grading_math_public.py and benchmarks/bench_math_grading.py so both count the
same cases: a suite's figures leave out the cases it repeats (`duplicate_of`), a total counts each
distinct case once (no `also_in` either), and "sound" leaves out labels that do not hold for MATH
(`unsound_for_math`). tests/data/math_public_cases.md says where each suite comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent / "data" / "math_public_cases.jsonl"
SUITES = ("math_verify", "lighteval", "nemo_skills", "hendrycks_math")


def load() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PATH.read_text(encoding="utf-8").splitlines()]


def in_suite(case: dict[str, Any]) -> bool:
    """Counted in its own suite's figures: not a repeat of an earlier case of the same suite."""
    return "duplicate_of" not in case


def distinct(case: dict[str, Any]) -> bool:
    """Counted in a total over all suites: the first time this gold, response and verdict appear."""
    return "duplicate_of" not in case and "also_in" not in case


def sound(case: dict[str, Any]) -> bool:
    return "unsound_for_math" not in case
