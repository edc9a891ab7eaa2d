"""Find the final answer a MATH response states, or decide that it states none.

A response may state an answer several ways and revise it; the answer that counts is the one
stated last, in any of the recognised forms: `\\boxed{..}` / `\\fbox{..}` (also `\\boxed 5`),
"The final answer is $X$" (the SCoRe prompt's format), "the answer is X", "Answer: X", and a
bold `**X**` that looks like mathematics rather than a heading. A response with none of these is
wrong (`None`); we never grade a number picked from the middle of a solution unless the caller
asks for the documented `last_number` fallback.
"""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_BOX_TOKEN = re.compile(r"[^\s$,;]{1,100}?(?=[.]?(?:\s|$|[$,;]))")
# "final answer is", "the answer is", and "Answer:" as a label (at a line's start or after "Final").
_STATED = re.compile(r"(?:final\s+answer\s+is|answer\s+is|(?:^|\n|final\s|[*#]\s?)answer\s*:)\s*:?\s*", re.IGNORECASE)
# Where a plain-text statement ends: a sentence's end, or the reason that follows the answer.
_STATEMENT_END = re.compile(
    r"[.!?;](?:\s|$)|\n|\s+I hope|,\s*(?:so|because|since|which|as|and)\b|\s+(?:because|since)\b|$"
)
_BOLD = re.compile(r"\*\*([^*\n]{1,80}?)\*\*")
# Words that start a sentence about the answer rather than the answer itself ("the answer is not 5").
_NOT_AN_ANSWER = re.compile(
    r"(?:not|an?|the|that|this|to|in|of|which|because|correct|wrong|incorrect|indeed|also|still|then|"
    r"given|as|equal|different|found|obtained|likely|probably|clearly)\b",
    re.IGNORECASE,
)
_HEADING = re.compile(
    r"(?:step|case|part|solution|answer|note|final|problem|method|approach|check|conclusion)\b", re.IGNORECASE
)
_MATHY = re.compile(r"[\d\\$=^]|^\(?[A-E]\)?$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_MAX_STATED = 200  # longer "answers" are sentences, not answers
_MAX_SPAN = 2000  # a $...$ that has not closed by then is not an answer (and is not searched to the end)


def brace_pairs(text: str) -> dict[int, int]:
    """Index of each unescaped "{" mapped to just past its closing "}", in one linear pass.

    One pass for the whole response, because scanning from every box to its end is quadratic
    on a response full of unclosed boxes; extraction runs in the grader's own process, unbounded.
    """
    pairs, stack = {}, []
    for j, c in enumerate(text):
        if c in "{}" and j and text[j - 1] == "\\":
            continue
        if c == "{":
            stack.append(j)
        elif c == "}" and stack:
            pairs[stack.pop()] = j + 1
    return pairs


def boxed_answers(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every top-level box; a box inside a box yields the outer one."""
    found: list[tuple[int, int, str]] = []
    pairs: dict[int, int] | None = None
    for m in _BOX.finditer(text):
        if found and m.start() < found[-1][1]:
            continue
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            pairs = brace_pairs(text) if pairs is None else pairs
            end = pairs.get(i)
            if end is not None:
                found.append((m.start(), end, text[i + 1 : end - 1]))
        elif i > m.end():  # `\\boxed 5`: the box holds the next token
            token = _BOX_TOKEN.match(text, i)
            if token:
                found.append((m.start(), token.end(), token.group(0)))
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last top-level `\\boxed{...}` / `\\fbox{...}`, nested braces balanced."""
    boxes = boxed_answers(text)
    return boxes[-1][2] if boxes else None


def unbox(answer: str) -> str:
    """`\\boxed{\\boxed{5}}` and `\\boxed{5}` are both 5."""
    s = answer.strip()
    boxes = boxed_answers(s)
    while len(boxes) == 1 and boxes[0][0] == 0 and boxes[0][1] == len(s):
        s = boxes[0][2].strip()
        boxes = boxed_answers(s)
    return s


def _math_span(text: str, i: int) -> tuple[str, int] | None:
    """The math at text[i:] when it opens with $, $$, \\( or \\[: (content, end)."""
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(open_, i):
            end = text.find(close, i + len(open_), i + _MAX_SPAN)
            if end < 0:
                return None
            return text[i + len(open_) : end], end + len(close)
    return None


def _stated_answers(text: str) -> list[tuple[int, str, bool]]:
    """(position, content, is_math) of each "the answer is ..." statement."""
    found = []
    for m in _STATED.finditer(text):
        i = m.end()
        span = _math_span(text, i)
        if span is not None:
            content, is_math = span[0], True
        else:
            rest = text[i : i + _MAX_STATED + 1]
            end = _STATEMENT_END.search(rest)
            content = rest[: end.start()]
            if rest[end.start() : end.start() + 1] == "?" or _NOT_AN_ANSWER.match(content):
                continue  # a question, or a sentence about the answer
            is_math = bool(_MATHY.search(content))
        content = content.strip().rstrip(".").strip()
        if content and len(content) <= _MAX_STATED:
            found.append((i, content, is_math))
    return found


def _bold_answers(text: str) -> list[tuple[int, str]]:
    found = []
    for m in _BOLD.finditer(text):
        content = m.group(1).strip().rstrip(".").strip()
        if content.endswith(":") or _HEADING.match(content) or not _MATHY.search(content):
            continue
        span = _math_span(content, 0)
        found.append((m.start(1), span[0] if span and span[1] == len(content) else content))
    return found


def extract_answer(response: str, fallback: str | None = None) -> str | None:
    """The last stated final answer, or None when the response states none.

    `fallback="last_number"` (off by default) takes the last number in the response when no
    answer is stated; it is how lenient public graders score unformatted output, and it is
    switched on explicitly because it grades numbers that the model never offered as an answer.
    """
    boxes = [(start, content) for start, _, content in boxed_answers(response)]
    stated = _stated_answers(response)
    # Words ("the answer is positive, because ...") revise nothing a box already says; they
    # count only in a response that boxes nothing.
    candidates = boxes + [(i, c) for i, c, is_math in stated if is_math or not boxes] + _bold_answers(response)
    if candidates:
        answer = unbox(max(candidates, key=lambda c: c[0])[1])
        return answer or None
    if fallback == "last_number":
        numbers = _NUMBER.findall(response)
        return numbers[-1] if numbers else None
    if fallback is not None:
        raise ValueError(f"unknown extraction fallback {fallback!r}; the only one is 'last_number'")
    return None
