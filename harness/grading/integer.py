"""The exact-integer grader (`integer`), for generated arithmetic: the stated answer, or else the last
number, must be a computed integer equal to the gold one.

Why not the MATH grader: it compares answers symbolically, so "Answer: 3 + 21" equals 24. On MATH that
is lenient at worst; on a task whose whole point is computing 3 + 21, restating the question is not an
answer. SCoRe training found that opening within 24 steps (benchmarks/score_demo.py, first run: the
trained model's second attempt appended "Answer: <the problem's expression>" and its Accuracy@t2 rose
from 28% to 58% with no arithmetic learned). Here an answer counts only as an integer literal: the
right-hand side of its last "=" (so "20 - 6 = 14" answers 14), with an optional sign, thousands commas,
quotes or bold around it and a closing full stop; anything else is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from harness.errors import HarnessError
from harness.grading import Verdict, register
from harness.grading.math_extract import extract_answers

# A signed integer, digits grouped by commas or not; "−" (U+2212) is a minus sign.
_INTEGER = re.compile(r"[+\-−]?(?:\d{1,3}(?:,\d{3})+|\d+)")
# Math delimiters, quotes, bold and spaces around or inside a literal ("The answer is "8"." is 8).
_WRAPPERS = re.compile(r"\\[()\[\]]|\$|\\!|\\,|[\"'“”‘’`*]|\s")


def integer_value(answer: str) -> int | None:
    """The integer an extracted answer states, or None when it states an expression or anything else."""
    value = _WRAPPERS.sub("", answer).rsplit("=", 1)[-1].rstrip(".")
    if not _INTEGER.fullmatch(value):
        return None
    return int(value.replace(",", "").replace("−", "-"))


class IntegerGrader:
    """Grades batches of (response, problem); pure Python, no worker processes."""

    def grade(self, items: Sequence[tuple[str, Any]]) -> list[Verdict]:
        verdicts = []
        for response, problem in items:
            readings = extract_answers(response, fallback="last_number")
            gold = integer_value(str(problem.answer))
            if gold is None:
                raise HarnessError(
                    f"problem {problem.id}: the integer grader needs an integer gold answer (got "
                    f"{problem.answer!r}); give the task `grader: math` for other answers"
                )
            hit = next((r for r in readings if integer_value(r) == gold), None)
            if hit is not None:
                verdicts.append(Verdict(hit, True))
            elif readings and integer_value(readings[0]) is None:
                verdicts.append(Verdict(readings[0], False, "not an integer"))
            else:
                verdicts.append(Verdict(readings[0] if readings else None, False))
        return verdicts

    def close(self) -> None:
        pass


register("integer")(IntegerGrader)
