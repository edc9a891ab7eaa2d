"""Find the final answer a MATH response states, or decide that it states none.

A response may state an answer several ways and revise it; the answer that counts is the one
stated last, in any of the recognised forms: `\\boxed{..}` / `\\fbox{..}` (also `\\boxed 5`; boxes
side by side, `$\\boxed{-2}$ and $\\boxed{1}$`, are one answer listing both), "The final answer is $X$"
(the SCoRe prompt's format), "the answer is X", "Answer: X" (also "Answer $X$", and a sentence after
the label: "Answer: The largest $n$ is 34" states 34), a restated answer ("the answer remains 5",
"my previous answer $5$ stands"), and a bold `**X**` that looks like mathematics rather than a heading.

Only when none of these is there, two readings a careful human grader also makes: a response that is
nothing but mathematics (`$x \\geq 5$`) is its own answer, and the last mathematics of a concluding
final sentence ("Therefore $x \\geq 5$ is the solution.") is the answer. Both need a response that
ended: a final sentence must end with its full stop, so a response cut off mid-way states nothing.
Otherwise the response is wrong (`None`); a number from the middle of a solution is never graded
unless the caller asks for the documented `last_number` fallback. Reasoning models' thinking
(`<think> .. </think>`) is skipped: only what follows it is read (see reasoning.py).
"""

from __future__ import annotations

import bisect
import re

from harness.grading.reasoning import answer_part

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_BOX_TOKEN = re.compile(r"[^\s$,;]{1,100}?(?=[.]?(?:\s|$|[$,;]))")
# "final answer is", "the answer is (still)", "Answer:" as a label (at a line's start or after "Final"),
# "Answer" as a label right before its math, and an answer restated in a later attempt ("remains").
_STATED = re.compile(
    r"(?:final\s+answer\s+is|answer\s+is(?:\s+still)?|(?:^|\n|final\s|[*#]\s?)answer\s*:"
    r"|(?:^|\n)[ \t*#]*(?:final\s+)?answer\**[ \t]+(?=\$|\\[(\[])"
    r"|(?:answer|result)\s+(?:remains|stays|still\s+stands(?:\s+at)?|stands\s+at|is\s+unchanged\s*:?))"
    r"\s*:?\s*",
    re.IGNORECASE,
)
# "my previous answer $5$ stands": the math between "answer" and a word that keeps it.
_KEPT = re.compile(r"answer\s+(?:of\s+)?(?=\$|\\\(|-?\d)", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
_KEEPS = re.compile(r"\s*(?:still\s+)?(?:stands|remains|holds|is\s+(?:still\s+)?(?:correct|right|valid))\b", re.I)
# Where a plain-text statement ends: a sentence's end, or the reason that follows the answer.
_STATEMENT_END = re.compile(
    r"[.!?;](?:\s|$)|\n|\s+I hope|,\s*(?:so|because|since|which|as|and)\b|\s+(?:because|since)\b|$"
)
_BOLD = re.compile(r"\*\*([^*\n]{1,80}?)\*\*")
# Words that start a sentence about the answer rather than the answer itself ("the answer is not 5").
_NOT_AN_ANSWER = re.compile(
    r"(?:not|an?|the|that|this|to|in|of|which|because|correct|wrong|incorrect|indeed|also|then|"
    r"given|as|equal|different|found|obtained|likely|probably|clearly)\b",
    re.IGNORECASE,
)
_HEADING = re.compile(
    r"(?:step|case|part|solution|answer|note|final|problem|method|approach|check|conclusion)\b", re.IGNORECASE
)
_MATHY = re.compile(r"[\d\\$=^]|^\(?[A-E]\)?$")
# In "The largest $n$ is 34" (a sentence after an "Answer:" label) the answer follows the last "is".
_TAIL = re.compile(r"(?:\bis|\bare|\bequals|=)\s+(?!not\b)(?=\S)", re.IGNORECASE)
# A concluding sentence: the words that say the sentence states the result.
_CONCLUDES = re.compile(
    r"\b(?:therefore|thus|hence|so|finally|in conclusion|in summary|overall|answer|solution|result)\b", re.I
)
# Text between two boxes that makes them one answer listing both: connectives, math delimiters, `x =`.
_BOX_GAP = re.compile(
    r"(?:\s|\$|\\[()\[\],;]|\\q?quad|[,;]|\band\b|\bor\b"
    r"|\\(?:text|mathrm)\{[^{}.;!?]{0,30}?\b(?:and|or)\s*\}|\\(?:text|mathrm)\{\s*,?\s*\}"
    r"|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*"
)
_MAX_BOX_GAP = 40
# What may follow the final math of a sentence or response: punctuation, a unit, a percent sign.
_TRAILER = re.compile(
    r"[\s.!$]*(?:\\?%|percent|pct|percentage|(?:cm|mm|km|m|kg|mg|g|ml|s|h|ft|in|lb|oz|mph)(?![a-zA-Z])"
    r"|\^\{?[23]\}?|\u20ac|\u00b2)*[\s.!$]*"
)
_PERCENT_WORDS = re.compile(r"(?<=[\d$}])\s*(?:percent(?:age)?|pct)\b", re.IGNORECASE)
_COMMANDS = re.compile(
    r"\\(?:text|mathrm|textbf|mbox|textnormal|operatorname)\s*\{[^{}]*\}|\\(?:begin|end)\{\w+\*?\}|\\[a-zA-Z]+"
)
_WORD = re.compile(r"[A-Za-z]{3,}")
_CURRENCY = re.compile(r"^\$(?=-?\d[\d,.]*$)|(?<=\d)\$$")
_TEMPLATE_TOKENS = re.compile(r"<\|[a-z_]+\|>\w*|</s>|<eos>")
_HOPE = re.compile(r"\s*I hope it is correct\.?\s*$", re.IGNORECASE)
_NEGATION_WORDS = r"(?:not|never|no longer|isn't|aren't|cannot|can't|wrong|incorrect)"
_NEGATION = re.compile(rf"\b{_NEGATION_WORDS}\b", re.IGNORECASE)
# A value denied by the words just before it ("is not 5", "is not equal to 5"; not "not 10, it's 5").
_DENIED = re.compile(rf"\b{_NEGATION_WORDS}(?:\s+[A-Za-z]+){{0,2}}[\s$]*$", re.IGNORECASE)
# A sentence that states a value: "... the probability is 2/3.", "We find that $x < 3$."
_STATES = re.compile(r"\b(?:is|are|it's|equals|be|find|get|obtain)\b", re.IGNORECASE)
_CONCLUDED_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?%?")

_DELIMITERS = re.compile(r"\\\$|\$\$|\$|\\\(|\\\)|\\\[|\\\]")  # `\$` is a dollar sign, read and skipped
_CLOSERS = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
_SENTENCE_END = re.compile(r"\n|[.!?](?=\s)")
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
            while close == "$" and end > 0 and text[end - 1] == "\\":  # `\$` is a dollar sign, not the end
                end = text.find(close, end + 1, i + _MAX_SPAN)
            if end < 0:
                return None
            return text[i + len(open_) : end], end + len(close)
    return None


def _statement(text: str, i: int) -> tuple[str, bool] | None:
    """The answer stated at text[i:] (after "the answer is"): (content, is_math), or None.

    A math span is the answer; an unclosed `$` runs to the end of the statement. Plain text runs
    to the end of the sentence; a sentence about the answer ("not 5", "the largest $n$ is 34")
    states the value after its last "is", if any.
    """
    span = _math_span(text, i)
    if span is not None:
        return span[0], True
    rest = text[i : i + _MAX_STATED + 1]
    end = _STATEMENT_END.search(rest)
    content = rest[: end.start()]
    if rest[end.start() : end.start() + 1] == "?":
        return None  # a question
    if content.startswith("$"):
        return content.strip("$ "), True
    if _NOT_AN_ANSWER.match(content):
        tails = list(_TAIL.finditer(content))
        if not tails:
            return None
        return _statement(content, tails[-1].end())
    numbers = _CONCLUDED_NUMBER.findall(content)
    if _WORD.search(_COMMANDS.sub("", content)) and len(numbers) == 1 and not _NEGATION.search(content):
        return numbers[0], True  # "Final Answer: Jane started growing Sphere 3 hours ago." states 3
    return content, bool(_MATHY.search(content))


def _stated_answers(text: str) -> list[tuple[int, str, bool]]:
    """(position, content, is_math) of each "the answer is ..." statement and each kept answer."""
    found = []
    for m in _STATED.finditer(text):
        stated = _statement(text, m.end())
        if stated is not None:
            found.append((m.end(), *stated))
    for m in _KEPT.finditer(text):
        span = _math_span(text, m.end())
        number = None if span else _PLAIN_NUMBER.match(text, m.end())
        end = span[1] if span else number.end() if number else None
        if end is not None and _KEEPS.match(text, end):
            found.append((m.end(), span[0] if span else number.group(0), True))
    out = []
    for i, content, is_math in found:
        content = content.strip().rstrip(".").strip()
        if content and len(content) <= _MAX_STATED:
            out.append((i, content, is_math))
    return out


def _bold_answers(text: str) -> list[tuple[int, str]]:
    found = []
    for m in _BOLD.finditer(text):
        content = m.group(1).strip().rstrip(".").strip()
        if content.endswith(":") or _HEADING.match(content) or not _MATHY.search(content):
            continue
        span = _math_span(content, 0)
        found.append((m.start(1), span[0] if span and span[1] == len(content) else content))
    return found


def _box_groups(text: str) -> list[tuple[int, list[str]]]:
    """(position, contents) per answer boxed: boxes side by side with only connectives between them
    ("$x = \\boxed{1}$ or $x = \\boxed{-2}$") are one answer that lists each box once, in order."""
    groups: list[tuple[int, list[str]]] = []
    last_end = None
    for start, end, content in boxed_answers(text):
        gap = text[last_end:start] if last_end is not None else None
        content = unbox(content)
        if gap is not None and len(gap) <= _MAX_BOX_GAP and _BOX_GAP.fullmatch(gap):
            if content not in groups[-1][1]:
                groups[-1][1].append(content)
            groups[-1] = (start, groups[-1][1])
        else:
            groups.append((start, [content]))
        last_end = end
    return groups


def _whole_math(text: str) -> str | None:
    """The response when it is nothing but mathematics: one math span, or a short formula with no words.

    A lone `$` is a currency sign there (`$1,000.99`, `\\$10`), and a percent word a percent sign.
    """
    s = _PERCENT_WORDS.sub("\\%", text.strip())
    span = _math_span(s, 0)
    if span is not None and _TRAILER.fullmatch(s, span[1]):
        return span[0] + s[span[1] :].strip(" .$")
    if _BOX.search(s):
        return None  # a box that boxed_answers did not read is unclosed: the response broke off
    s = _CURRENCY.sub("", s.replace("\\$", ""))  # a lone $ by a number; `$(4a^2)^3` is math left open
    if re.fullmatch(r"[A-Za-z]{1,20}", s):
        return s  # one word ("odd", "Monday"): the whole response
    if s and len(s) <= _MAX_STATED and "\n" not in s and "$" not in s and not _WORD.search(_COMMANDS.sub("", s)):
        return s
    return None


def math_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each closed math span ($..$, $$..$$, \\(..\\), \\[..\\]), left to right.

    Each opener looks up its closer among the delimiters' positions by bisection, so a response full
    of unclosed openers is read in O(n log n); a regex or a scan from every opener is quadratic, and
    extraction runs in the grader's own process, outside any time limit.
    """
    tokens = [(m.start(), m.group()) for m in _DELIMITERS.finditer(text) if m.group() != "\\$"]
    starts = [p for p, _ in tokens]
    closers = {c: [p for p, kind in tokens if kind == c] for c in set(_CLOSERS.values())}
    spans, t = [], 0
    while t < len(tokens):
        p, kind = tokens[t]
        closer = _CLOSERS.get(kind)
        if closer is not None:
            found = closers[closer]
            j = bisect.bisect_right(found, p)
            if j < len(found) and found[j] - p <= _MAX_SPAN:
                q = found[j]
                spans.append((p, q + len(closer), text[p + len(kind) : q]))
                t = bisect.bisect_right(starts, q)
                continue
        t += 1
    return spans


def _last_sentence(text: str, spans: list[tuple[int, int, str]]) -> int:
    """Where the final sentence starts: after the last ". ", "! ", "? " or line break outside math."""
    inside = [(a, b) for a, b, _ in spans]
    for m in reversed(list(_SENTENCE_END.finditer(text.rstrip(" \t\n.!?")))):
        k = bisect.bisect_right(inside, (m.start(), len(text))) - 1
        if k < 0 or not inside[k][0] <= m.start() < inside[k][1]:
            return m.end()
    return 0


def _concluding_answer(text: str) -> str | None:
    """The answer of a concluding final sentence, read as a careful grader reads the end of a solution.

    The final sentence (after "I hope it is correct." and chat-template tokens are set aside) must end
    with its full stop, or with its math: a response cut off by the token limit concludes nothing.
    Its answer is the math (or number) that ends it ("... is $(7, 6)$.", "... is 2/3."), or, in a
    sentence that says it concludes ("Therefore", "Thus", "So", "... is the solution"), its only
    math or number ("Therefore, there are 12 sequences."). Math in the middle of the work is never read.
    """
    s = _HOPE.sub("", _TEMPLATE_TOKENS.sub("", text)).rstrip()
    all_spans = math_spans(s)
    start = _last_sentence(s, all_spans)
    sentence = s[start:]
    if not sentence.strip(" \t\n."):
        return None
    spans = [(a - start, b - start, c) for a, b, c in all_spans if a >= start]
    ends_with_math = bool(spans) and _TRAILER.fullmatch(sentence, spans[-1][1]) is not None
    whole = start == 0 and len(s) <= _MAX_STATED  # a one-sentence reply: too short to have been cut off
    if not (sentence.endswith((".", "!")) or ends_with_math or whole):
        return None
    # The sentence's words with each math span replaced by a space (so "3$x$4" does not read as 34).
    cuts = [0] + [i for a, b, _ in spans for i in (a, b)] + [len(sentence)]
    plain = " ".join(sentence[cuts[k] : cuts[k + 1]] for k in range(0, len(cuts), 2))
    states = _CONCLUDES.search(sentence) or _STATES.search(plain)
    if ends_with_math and (states or sentence[: spans[-1][0]].rstrip().endswith(":")):
        if not _DENIED.search(sentence[: spans[-1][0]]):
            return spans[-1][2]
    numbers = list(_CONCLUDED_NUMBER.finditer(plain))
    if numbers and states and _TRAILER.fullmatch(plain, numbers[-1].end()):
        if not _DENIED.search(plain[: numbers[-1].start()]):
            return numbers[-1].group(0)
    if _CONCLUDES.search(sentence) and not _NEGATION.search(sentence):
        found = [c for _, _, c in spans] + [m.group(0) for m in numbers]
        if len(found) == 1:
            return found[0]
    return None


def extract_answers(response: str, fallback: str | None = None) -> list[str]:
    """The last stated final answer, then the readings it may also have; [] when the response states none.

    Boxes side by side give two readings: the list of all of them (`\\boxed{-2}` and `\\boxed{1}` answer
    "1, -2"), then the last box alone, MATH's own convention (its reference solutions box equivalent
    forms side by side, "$\\boxed{x+11}$ or $\\boxed{11+x}$", with the last box as the gold answer).
    `fallback="last_number"` (off by default) takes the last number in the response when no
    answer is stated; it is how lenient public graders score unformatted output, and it is
    switched on explicitly because it grades numbers that the model never offered as an answer.
    """
    if fallback not in (None, "last_number"):
        raise ValueError(f"unknown extraction fallback {fallback!r}; the only one is 'last_number'")
    text = answer_part(response)
    if text is None:
        return []  # cut off while thinking
    boxes = _box_groups(text)
    stated = _stated_answers(text)
    # Words ("the answer is positive, because ...") revise nothing a box already says; they
    # count only in a response that boxes nothing.
    candidates = [(i, [c]) for i, c, is_math in stated if is_math or not boxes] + [
        (i, [c]) for i, c in _bold_answers(text)
    ]
    candidates += boxes
    if candidates:
        parts = [unbox(c) for c in max(candidates, key=lambda c: c[0])[1]]
        readings = [", ".join(parts), parts[-1]] if len(parts) > 1 else parts
        return [r for r in readings if r]
    answer = _whole_math(text) or _concluding_answer(text)
    if answer and answer.strip():
        return [answer.strip()]
    if fallback == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1:]
    return []


def extract_answer(response: str, fallback: str | None = None) -> str | None:
    """The first reading of extract_answers: the answer as stated, or None when there is none."""
    answers = extract_answers(response, fallback)
    return answers[0] if answers else None
