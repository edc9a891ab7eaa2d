"""MATH grading: extract the final answer from a response, normalise, compare with the gold answer.

This is the simple grader (string normalisation plus an exact numeric check); every caller goes
through `grade_math_answer`, so a stronger grader replaces this one function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from harness.grading import Verdict, register

_FINAL_ANSWER = re.compile(r"final answer is\s*\$(.+?)\$\s*\.?\s*(?:I hope|$)", re.IGNORECASE | re.DOTALL)
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$|\n)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_answer(response: str) -> str | None:
    """The last stated final answer, or None when the response states none."""
    candidates: list[tuple[int, str]] = []
    boxed = last_boxed(response)
    if boxed is not None:
        candidates.append((max(response.rfind("\\boxed"), response.rfind("\\fbox")), boxed))
    for pattern in (_FINAL_ANSWER, _ANSWER_IS):
        matches = list(pattern.finditer(response))
        if matches:
            candidates.append((matches[-1].start(), matches[-1].group(1)))
    if not candidates:
        return None
    answer = max(candidates)[1].strip()
    return last_boxed(answer) or answer


def normalize(answer: str) -> str:
    s = answer.strip()
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right)", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = (
        s.replace("^\\circ", "")
        .replace("^{\\circ}", "")
        .replace("\\%", "")
        .replace("\\$", "")
        .replace("$", "")
    )
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace(" ", "")
    s = re.sub(r"^[a-zA-Z]\s*=", "", s)
    s = s.rstrip(".")
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    return s


def _as_number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+(?:\.\d+)?|-?\d+/\d+", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def grade_math_answer(extracted: str | None, gold: str) -> bool:
    """Whether an extracted answer equals the gold answer (exact after normalisation, or as numbers)."""
    if extracted is None:
        return False
    a, b = normalize(extracted), normalize(str(gold))
    if a == b:
        return True
    na, nb = _as_number(a), _as_number(b)
    return na is not None and na == nb


class MathGrader:
    def grade(self, items: Sequence[tuple[str, Any]]) -> list[Verdict]:
        verdicts = []
        for response, problem in items:
            extracted = extract_answer(response)
            verdicts.append(
                Verdict(extracted=extracted, correct=grade_math_answer(extracted, problem.answer))
            )
        return verdicts


register("math")(MathGrader)
