"""Word-level differences between two attempts, and where an extracted answer sits in a response.

Shared by `score-eval show` (terminal) and report.html (browser), so both highlight the same words.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

_TOKEN = re.compile(r"\s+|[^\s]+")


def word_diff(before: str, after: str) -> list[tuple[str, str]]:
    """Segments (op, text) turning `before` into `after`, op "=" kept, "-" removed, "+" added.

    Words and runs of whitespace are the units, so a changed number is one small change rather
    than a rewritten line. Invariant: joining the "=" and "-" texts gives `before`; joining the
    "=" and "+" texts gives `after`. Adjacent segments never share an op.
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
