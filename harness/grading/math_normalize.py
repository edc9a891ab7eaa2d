"""Rewrite a MATH answer into a canonical string, so that most equal answers compare equal as text.

Only notation that never changes the value is removed or rewritten: spacing, `\\left`/`\\right`,
`\\dfrac`/`\\tfrac`, units and `\\text{}` wrappers, degree signs, `\\%` and `\\$`, thousands
separators, trailing decimal zeros, and the brace-less `\\frac12` / `\\sqrt2`. A leading `x =` is
kept here and removed by `strip_prefix` where the comparison decides (an equation meets an equation).
The percent sign is dropped, never read as x/100: "50\\%" is 50, so a response that says 0.5 for
a gold "50\\%" is wrong (the MATH convention is that a percent answer is the number before %).
"""

from __future__ import annotations

import re

from harness.grading.math_extract import unbox

# Unit words that may follow a number; removed only after something that is not itself a unit.
UNITS = r"""
    degrees? radians? units? square sq\.? cubic centimeters? meters? kilometers? millimeters?
    inch(?:es)? feet foot ft yards? miles? cm mm km m in seconds? minutes? hours? days? weeks?
    months? years? mph dollars? cents? pounds? ounces? grams? kg g liters? gallons? cups? people
    students? ways points? percent sec min hrs? times steps? tiles? coins? marbles? games? boxes
    balls? cards? books?
""".split()
_UNIT = "(?:" + "|".join(UNITS) + r")(?:\^\{?[23]\}?)?"
_ONE_UNIT = re.compile(_UNIT)
_WORDS = re.compile(r"[A-Za-z][A-Za-z ]*")  # not "p.m.": 4:51 a.m. and 4:51 p.m. differ
# Commands that set words upright; a unit may come in any of them (`5\textbf{ meters}`). The math
# alphabets (\mathbf ...) are only unwrapped, never dropped as units: `2\mathbf{v}` is a vector.
_TEXT_COMMANDS = "text|textnormal|textrm|textbf|textit|textup|mbox|mathrm"
# Checked word by word in `_drop_unit`: one regex with `(?:unit\s*)+` backtracks exponentially
# on "minmin...", since "min" is also "m" + "in".
_TEXT_UNIT = re.compile(r"(?<=[\w})])\s*\\(?:" + _TEXT_COMMANDS + r")\s*\{([^{}]*)\}(\^\{?[23]\}?)?")
_PLAIN_UNIT = re.compile(r"(?<=[\d}])\s+(?:" + _UNIT + r")(?:\s+(?:" + _UNIT + r"))*\s*$")
_WRAPPERS = re.compile(r"\\(?:" + _TEXT_COMMANDS + r"|textsf|texttt|mathbf|mathit|mathsf|operatorname|rm|bf)\s*\{([^{}]*)\}")
_REMOVE = (
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\quad",
    "\\qquad",
    "\\displaystyle",
    "\\limits",
    "\\$",
    "$",
    "\\%",
    "%",
    "^{\\circ}",
    "^\\circ",
    "°",
    "\\degree",
    "{,}",
)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BRACED_THOUSANDS = re.compile(r"\{" + _THOUSANDS.pattern + r"\}")  # \frac{1}{20,000}
# `x =`, `a_1 =`, `f(-2) =`, `k \equiv`, `x \in`: a name for the unknown, when no other `=` follows.
_PREFIX = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?(?:\([^()=]*\))?\s*(?:=|\\equiv|\\in(?![a-zA-Z]))(?!.*=)")
_DECIMAL = re.compile(r"(?<!\d)(\d+)\.(\d+)")  # starts only at a run's first digit: linear
_ROW, _KEPT_SPACE = "\x01", "\x02"
_CONNECTIVES = re.compile(r"\\text\{\s*(?:and|or|,)\s*\}|\s+(?:and|or)\s+")


def _drop_unit(m: re.Match[str]) -> str:
    """Drop `\\text{ cm}` after anything, and any words (`\\text{ right triangles}`) after a number."""
    text = m.group(1).strip()
    if all(_ONE_UNIT.fullmatch(w) for w in text.split()):
        return ""
    after_number = m.string[m.start() - 1] in "0123456789}"
    return "" if after_number and _WORDS.fullmatch(text) else m.group(0)


def _drop_trailing_zeros(m: re.Match[str]) -> str:
    decimals = m.group(2).rstrip("0")
    return m.group(1) + ("." + decimals if decimals else "")


def _brace_shorthand(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1x` -> `\\frac{1}{x}`, `\\sqrt2` -> `\\sqrt{2}`."""
    token = r"(\w|\\[a-zA-Z]+(?![a-zA-Z]))"  # one character or one command, as TeX reads an argument
    s = re.sub(r"\\frac\s*" + token + r"\s*" + token, r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*" + token, r"\\frac\1{\2}", s)
    s = re.sub(r"\\frac\s*" + token + r"\s*(\{)", r"\\frac{\1}\2", s)
    return re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)


def _remove_spaces(s: str) -> str:
    """Drop spaces except where they end a command or a one-character subscript (`\\sin x`, `\\log_2 8`)."""
    s = re.sub(r"_(\w)\s+", r"_{\1}", s)
    s = re.sub(r"(\\[a-zA-Z]+)\s+(?=\w)", "\\1" + _KEPT_SPACE, s)
    return re.sub(r"\s+", "", s).replace(_KEPT_SPACE, " ")


def strip_prefix(s: str) -> str:
    """`x=5`, `k \\equiv 3` and `x \\in [1,2]` are 5, 3 and [1,2]; `y = 2x + 3` keeps its right side."""
    return _PREFIX.sub("", s, count=1)


def normalize(answer: str) -> str:
    """The canonical text of an answer (see the module docstring for what is rewritten)."""
    s = unbox(str(answer)).strip()
    if s.startswith("\\[") and s.endswith("\\]") or s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = re.sub(r"\\(le|ge)(?![a-zA-Z])", r"\\\1q", s).replace("\\neq", "\\ne")
    s = s.replace("\\\\", _ROW)  # a matrix row break must survive the removal of "\ "
    s = s.replace("\\ ", " ").replace("~", " ")
    s = re.sub(r"^\\approx\s*", "", s)  # a gold answer given as "\\approx 8.24" is the number
    s = re.sub(r"\\phantom\s*(?:\{[^{}]*\}|.)", "", s)  # invisible: only aligns columns
    s = _CONNECTIVES.sub(",", s)
    s = _TEXT_UNIT.sub(_drop_unit, s)
    for token in _REMOVE:
        s = s.replace(token, "")
    s = _PLAIN_UNIT.sub("", s)
    for _ in range(3):  # \text{\textbf{x}} and similar nest
        s = _WRAPPERS.sub(r"\1", s)
    # Thousands separators are read before spaces go: "32,349" is one number, "32, 349" two answers.
    s = s.strip()
    if _THOUSANDS.fullmatch(s.rstrip(".")):
        s = s.replace(",", "")
    s = _BRACED_THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    s = _remove_spaces(s)
    s = s.rstrip(".").rstrip("\\")
    s = _DECIMAL.sub(_drop_trailing_zeros, s)
    s = _brace_shorthand(s)
    if re.fullmatch(r"\(([A-Ea-e])\)", s):  # multiple choice "(C)" is C
        s = s[1]
    return s.replace(_ROW, "\\\\")
