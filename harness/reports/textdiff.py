"""Word-level differences between two attempts, and where an extracted answer sits in a response.

Shared by `score-eval show` (terminal) and report.html (browser), so both highlight the same words.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

# LaTeX in the delimiters report.html renders: $$...$$, \[...\], \(...\), and $...$ on one line.
_MATH = r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\$[^$\n]+?\$"
# Diff units: a whole formula, a run of whitespace, a word that stops where a formula starts, or a
# lone delimiter that opens none. A formula is never split, so a page can render each one.
_TOKEN = re.compile(rf"{_MATH}|\s+|(?:[^\s$\\]|\\(?![(\[]))+|\S", re.DOTALL)
_MATH_RE = re.compile(_MATH, re.DOTALL)


def word_diff(before: str, after: str) -> list[tuple[str, str]]:
    """Segments (op, text) turning `before` into `after`, op "=" kept, "-" removed, "+" added.

    Words, formulas and runs of whitespace are the units, so a changed number is one small change
    rather than a rewritten line, and a formula is kept or replaced whole. Invariant: joining the
    "=" and "-" texts gives `before`; joining the "=" and "+" texts gives `after`. Adjacent segments
    never share an op.
    """
    a, b = _TOKEN.findall(before), _TOKEN.findall(after)
    segments: list[tuple[str, str]] = []

    def emit(op: str, tokens: list[str]) -> None:
        if not tokens:
            return
        text = "".join(tokens)
        if segments and segments[-1][0] == op:
            segments[-1] = (op, segments[-1][1] + text)
        else:
            segments.append((op, text))

    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            emit("=", a[i1:i2])
        else:
            emit("-", a[i1:i2])
            emit("+", b[j1:j2])
    return segments


def answer_span(response: str, extracted: str | None) -> tuple[int, int] | None:
    """(start, end) of the extracted answer in the response: its last occurrence, since graders
    take the final answer; None when there is none or the grader normalised it beyond recognition."""
    if not extracted:
        return None
    start = response.rfind(extracted)
    if start < 0:
        return None
    return start, start + len(extracted)


def widen_to_math(text: str, span: tuple[int, int] | None) -> tuple[int, int] | None:
    """The span, or the whole formula it lies in (delimiters included), so that marking the answer
    never cuts a formula the page renders."""
    if span is None:
        return None
    for match in _MATH_RE.finditer(text):
        if match.start() <= span[0] and span[1] <= match.end():
            return match.span()
    return span
