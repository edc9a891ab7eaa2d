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
    months? years? mph dollars? cents? pounds? ounces? grams? kg g liters? gallons? cups? people pct percentage
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
_WRAPPERS = re.compile(
    r"\\(?:"
    + _TEXT_COMMANDS
    + r"|textsf|texttt|mathbf|mathit|mathsf|mathcal|mathscr|mathfrak|boldsymbol|operatorname|rm|bf)\s*\{([^{}]*)\}"
)
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
_ASCII_RELATIONS = (
    (">=", "\\geq "),
    ("<=", "\\leq "),
    ("!=", "\\ne "),
    ("\u2265", "\\geq "),
    ("\u2264", "\\leq "),
    ("\u2260", "\\ne "),
    ("\\lt", "<"),
    ("\\gt", ">"),
)
# `\\frac` written with its backslash doubled (an escaped string pasted as LaTeX) is `\frac`.
_DOUBLED_COMMAND = re.compile(
    r"(?<!\\)\\\\(?=(?:left|right|frac|dfrac|tfrac|sqrt|pi|cdot|times|text|infty|begin|end|leq?|geq?|neq?|in|cup)(?![a-zA-Z]))"
)
_SEMICOLON_TUPLE = re.compile(r"\([^(),;]*(?:;[^(),;]*)+\)")  # (0;-2;6): coordinates written with ";"
_THIN_GROUPS = re.compile(r"(?<=\d),\\!\s*(?=\d)")
_MIXED = re.compile(r"(?<![\d.])(\d+)\s+(\d+)/(\d+)(?![\d/])")  # 3128 1/2 is 3128 + 1/2
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BRACED_THOUSANDS = re.compile(r"\{" + _THOUSANDS.pattern + r"\}")  # \frac{1}{20,000}
# `x =`, `a_1 =`, `f(-2) =`, `k \equiv`, `x \in`: a name for the unknown, when no other `=` follows.
_PREFIX = re.compile(r"^(?P<lhs>[^=<>]+?)\s*(?:=|\\equiv|\\in(?![a-zA-Z]))(?!.*=)")
# Removed from a left side before it is checked for being a name: subscripts, a function's argument, commands.
_NAME_PARTS = re.compile(r"_\{[^{}]*\}|_\w|(?<=[a-zA-Z])\([^()]*\)|\\[a-zA-Z]+")
_NAME = re.compile(r"[a-zA-Z{}()|:,;' ]+")
_DECIMAL = re.compile(r"(?<!\d)(\d+)\.(\d+)")  # starts only at a run's first digit: linear
_ROW, _KEPT_SPACE = "\x01", "\x02"
_CONNECTIVES = re.compile(r"\\text\{\s*(?:and|or|,)\s*\}|\s+(?:and|or)\s+|(?<=[)\]])(?:and|or)(?=[(\[])")


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


def encloses(s: str) -> bool:
    """Whether s[0]'s bracket closes at s[-1] (so "(x+1)(x-1)" is not one bracketed group)."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def strip_prefix(s: str) -> str:
    """`x=5`, `k \\equiv 3`, `x \\in [1,2]`, `(p,q)=(3,2)` and `AB:CD=2:3` are 5, 3, [1,2], (3,2) and 2:3.

    What stands left of the one `=` must be a name (letters, subscripts, a function's argument, a
    ratio or fraction of names), so `y = 2x + 3` keeps its right side but `x + y = 5` stays whole.
    """
    m = _PREFIX.match(s)
    if m is None:
        return s
    name = _NAME_PARTS.sub("", m.group("lhs"))
    return s[m.end() :] if _NAME.fullmatch(name) and re.search("[a-zA-Z]", name) else s


def normalize(answer: str) -> str:
    """The canonical text of an answer (see the module docstring for what is rewritten)."""
    s = unbox(str(answer)).strip()
    if s.startswith("\\[") and s.endswith("\\]") or s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = _DOUBLED_COMMAND.sub(r"\\", s)
    s = _THIN_GROUPS.sub("", s)
    s = re.sub(r"\\(le|ge)(?![a-zA-Z])", r"\\\1q", s).replace("\\neq", "\\ne")
    for ascii_, latex in _ASCII_RELATIONS:
        s = s.replace(ascii_, latex)
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
    # Thousands separators are read before spaces go: "32,349" is one number, "32, 349" two answers;
    # LaTeX's `,\!` (a comma with its space taken back) only ever groups digits, in any grouping.
    s = s.strip()
    s = _MIXED.sub(r"\1\\frac{\2}{\3}", s)
    if _THOUSANDS.fullmatch(s.rstrip(".")):
        s = s.replace(",", "")
    s = _BRACED_THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    s = _remove_spaces(s)
    s = s.rstrip(".").rstrip("\\")
    s = _DECIMAL.sub(_drop_trailing_zeros, s)
    s = _brace_shorthand(s)
    if re.fullmatch(r"\(([A-Ea-e])\)", s):  # multiple choice "(C)" is C
        s = s[1]
    s = _SEMICOLON_TUPLE.sub(lambda m: m.group(0).replace(";", ","), s)
    if s.startswith("{") and s.endswith("}") and encloses(s):
        s = s[1:-1]  # bare braces only group in LaTeX: ${1,3}$ shows 1,3 (a set is \{1,3\})
    return s.replace(_ROW, "\\\\")
