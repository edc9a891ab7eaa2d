"""Decide whether two MATH answers are equal: the decision logic of the MATH grader.

The answer's shape is read here, not by a library: a matrix, a union of intervals, a bracketed
tuple or interval (bracket types are part of the answer), a set `\\{..\\}`, a bare list of
answers ("1, 2"), a `\\pm` pair, or a single expression. Shapes compare part by part: tuples and
intervals in order with the same brackets, sets and bare lists as multisets (in order when the
problem asks for an order), so a subset of the required answers or a swapped bracket is wrong.

Single expressions compare as exact rationals where both are plain numbers (fast, no sympy);
otherwise latex2sympy2_extended parses them and sympy decides: decimals are read as exact
rationals, so 1.414 is not sqrt(2), while 0.5 is 1/2 and 10.0 is 10; constants are equal when
their difference vanishes at 50 significant digits relative to their size (so 1/2006! differs
from 1/2004!); expressions in variables are equal when they agree at several fixed points.
Nothing here simplifies symbolically, which is what hangs for minutes; what is left that can
still run long (huge powers, deep towers) runs in a worker process that the grader kills.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from harness.grading.math_normalize import encloses, normalize, strip_prefix

MAX_ANSWER_CHARS = 2000  # longer "answers" are prose; they are compared as raw text only
MAX_SYMBOLIC_CHARS = 600  # longer answers are not handed to the LaTeX parser
_ORDER_WORDS = re.compile(
    r"\b(?:in (?:increasing|decreasing|ascending|descending) order|in order|ordered (?:list|"
    r"sequence)|from (?:least|smallest|greatest|largest) to)\b",
    re.IGNORECASE,
)
_OPEN = "([{"
_CLOSE = ")]}"


# ---- shapes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    kind: str  # "scalar", "matrix", "union", "bracketed", "set", "list"
    parts: tuple[Any, ...] = ()
    brackets: str = ""  # "(]" etc. for "bracketed"
    text: str = ""  # for "scalar"


def split_top(s: str, sep: str) -> list[str]:
    """Split at `sep` where no bracket of any kind is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return parts


_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.DOTALL)


def shape(s: str) -> Shape:
    """The shape of a normalised answer."""
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and _MATRIX.fullmatch(s[1:-1]):
        s = s[1:-1]  # \left[\begin{array}..\end{array}\right]: the brackets are the matrix's own
    m = _MATRIX.fullmatch(s)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        return Shape("matrix", tuple(tuple(shape(c) for c in r.split("&")) for r in rows))
    listed = split_top(s, ";")  # "(1,2); (3,4)": semicolons separate answers that hold commas
    if len(listed) > 1:
        return Shape("list", tuple(shape(p) for p in listed if p))
    union = split_top(s, "\\cup")
    if len(union) > 1:
        return Shape("union", tuple(shape(p) for p in union))
    if s.startswith("\\{") and s.endswith("\\}") and encloses(s[1:]):
        return Shape("set", _items(s[2:-2]))
    if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and encloses(s):
        items = _items(s[1:-1])
        if len(items) > 1:
            return Shape("bracketed", items, brackets=s[0] + s[-1])
    items = _items(s)
    if len(items) > 1:
        return Shape("list", items)
    return items[0] if items else Shape("scalar", text="")


def _items(s: str) -> tuple[Shape, ...]:
    """Comma-separated parts, each `a \\pm b` read as the two answers a + b and a - b."""
    out: list[Shape] = []
    for part in split_top(s, ","):
        pm = split_top(part, "\\pm")
        if len(pm) == 2:
            head = strip_prefix(pm[0]) or ""
            out += [Shape("scalar", text=f"{head}+({pm[1]})"), Shape("scalar", text=f"{head}-({pm[1]})")]
        elif part:
            sub = shape(part) if part[0] in "([\\" and part != s else Shape("scalar", text=part)
            out.append(sub)
    return tuple(out)


def shapes_equal(a: Shape, b: Shape, ordered: bool) -> bool:
    if a.kind == "scalar" and b.kind == "scalar":
        return scalars_equal(a.text, b.text)
    kinds = {a.kind, b.kind}
    if a.kind == b.kind == "matrix":
        return len(a.parts) == len(b.parts) and all(_in_order(ra, rb, ordered) for ra, rb in zip(a.parts, b.parts))
    if a.kind == b.kind == "bracketed":
        return a.brackets == b.brackets and _in_order(a.parts, b.parts, ordered)
    if a.kind == b.kind == "union":
        return _as_multiset(a.parts, b.parts, ordered)
    if kinds <= {"set", "list"}:
        return (_in_order if ordered else _as_multiset)(a.parts, b.parts, ordered)
    if kinds in ({"scalar", "bracketed"}, {"scalar", "union"}):  # -2 \\leq x \\leq 7 is [-2, 7]
        scalar, other = (a, b) if a.kind == "scalar" else (b, a)
        interval = interval_of(scalar.text)
        return interval is not None and shapes_equal(interval, other, ordered)
    if kinds == {"list", "bracketed"}:  # "1, 2" for the ordered pair "(1, 2)"
        bracketed = a if a.kind == "bracketed" else b
        return bracketed.brackets == "()" and _in_order(a.parts, b.parts, ordered)
    return False


_BOUND = re.compile(r"(\\leq|<)")
_UNKNOWN = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?(?:\([^()]*\))?")  # x, a_1, f(x)


def interval_of(s: str) -> Shape | None:
    """The interval an inequality in one unknown states: `a < x \\leq b` is (a, b], `x \\geq 5` is [5, \\infty)."""
    s = s.replace("\\lt", "<").replace("\\gt", ">")
    if ">" in s or "\\geq" in s:  # read right to left: b > x > a is a < x < b
        parts = re.split(r"(\\geq|>)", s)
        if len(parts) not in (3, 5) or "<" in s or "\\leq" in s:
            return None
        parts = [p.replace("\\geq", "\\leq").replace(">", "<") for p in reversed(parts)]
    else:
        parts = _BOUND.split(s)
    parts = [p.strip() for p in parts]
    if len(parts) == 3:  # x < b, or a < x: the unknown is the side that is a name
        if _UNKNOWN.fullmatch(parts[0]) and not _UNKNOWN.fullmatch(parts[2]):
            parts = ["-\\infty", "<", *parts]
        elif _UNKNOWN.fullmatch(parts[2]):
            parts = [*parts, "<", "\\infty"]
        else:
            return None
    if len(parts) != 5 or not parts[0] or not parts[4] or not _UNKNOWN.fullmatch(parts[2]):
        return None
    low = "[" if parts[1] == "\\leq" else "("
    high = "]" if parts[3] == "\\leq" else ")"
    return Shape("bracketed", (Shape("scalar", text=parts[0]), Shape("scalar", text=parts[4])), brackets=low + high)


def _in_order(xs: Sequence[Shape], ys: Sequence[Shape], ordered: bool) -> bool:
    return len(xs) == len(ys) and all(shapes_equal(x, y, ordered) for x, y in zip(xs, ys))


def _as_multiset(xs: Sequence[Shape], ys: Sequence[Shape], ordered: bool) -> bool:
    if len(xs) != len(ys):
        return False
    unmatched = list(ys)
    for x in xs:
        match = next((i for i, y in enumerate(unmatched) if shapes_equal(x, y, ordered)), None)
        if match is None:
            return False
        unmatched.pop(match)
    return True


# ---- single expressions ----------------------------------------------------------------------------

_INT = r"-?\d+"
_RATIONAL_FORMS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], Fraction]], ...] = (
    (re.compile(r"-?\d+(?:\.\d*)?|-?\.\d+"), lambda m: Fraction(m.group(0))),
    (re.compile(r"(-?\d+)/(\d+)"), lambda m: Fraction(int(m.group(1)), int(m.group(2)))),
    (
        re.compile(r"(-?)\\frac\{(" + _INT + r")\}\{(" + _INT + r")\}"),
        lambda m: (-1 if m.group(1) else 1) * Fraction(int(m.group(2)), int(m.group(3))),
    ),
    (
        re.compile(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}"),  # mixed number 2\frac{1}{2}
        lambda m: (-1 if m.group(1) else 1) * (int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))),
    ),
    (re.compile(r"(-?)(\d*)\.(\d*)\\overline\{(\d+)\}"), lambda m: _repeating(*m.groups())),
)


def _repeating(sign: str, whole: str, fixed: str, period: str) -> Fraction:
    """0.1\\overline{6} = 1/6: the fixed digits, then the period repeated for ever."""
    value = Fraction(int(whole or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
    value += Fraction(int(period), (10 ** len(period) - 1) * 10 ** len(fixed))
    return -value if sign else value


def as_rational(s: str) -> Fraction | None:
    """The exact value of a plain number (integer, decimal, fraction, mixed or repeating), else None."""
    if len(s) > 200:
        return None
    for pattern, value in _RATIONAL_FORMS:
        m = pattern.fullmatch(s)
        if m:
            try:
                return value(m)
            except (ZeroDivisionError, ValueError):
                return None
    return None


_BASE = re.compile(r"(\w+)_\{?(\d+)\}?")
_WORDS = re.compile(r"[A-Za-z]{3,}")
_RELATION = re.compile(r"\\leq|\\geq|\\lt|\\gt|\\ne|<|>|=")


def top_relations(s: str) -> list[re.Match[str]]:
    """The relations of s outside brackets and braces (`\\sum_{k=0}` holds no relation of the answer's)."""
    masked, depth = [], 0
    for c in s:
        depth += c in _OPEN
        masked.append(c if depth == 0 else " ")
        depth -= c in _CLOSE and depth > 0
    return list(_RELATION.finditer("".join(masked)))


_CLOCK = re.compile(r"\d{1,2}:\d{2}")  # a time of day, not a ratio or a division: compared as text


def scalars_equal(a: str, b: str) -> bool:
    """Two single answers (no top-level commas) are equal.

    An equation meets an equation as a relation (`y = 2x + 3` is `2x - y = -3`); otherwise a
    leading `x =` only names the unknown and is dropped (`k = 3` is 3).
    """
    if a == b:
        return True
    if not a or not b or a.count("'") != b.count("'"):
        return False  # f' is not f (the parser drops primes)
    a, b = _chain_value(a), _chain_value(b)
    if top_relations(a) and top_relations(b) and _relations_equal(a, b):
        return True
    a, b = strip_prefix(a), strip_prefix(b)
    if a == b:
        return True
    if _WORDS.fullmatch(a) or _WORDS.fullmatch(b):  # names, days, "even": words compare as text
        return a.lower() == b.lower()
    if _CLOCK.fullmatch(a) or _CLOCK.fullmatch(b):
        return False  # 12:00 is not 1:00, though both would read as a division by zero
    ra, rb = as_rational(a), as_rational(b)
    if ra is not None and rb is not None:
        return rationals_equal(a, ra, b, rb)
    base_a, base_b = _BASE.fullmatch(a), _BASE.fullmatch(b)
    if base_a or base_b:  # 1011_2: digits in a base; the base may be left off, never changed
        da, ba = (base_a.group(1), base_a.group(2)) if base_a else (a, None)
        db, bb = (base_b.group(1), base_b.group(2)) if base_b else (b, None)
        return da == db and (ba is None or bb is None or ba == bb)
    rel_a, rel_b = top_relations(a), top_relations(b)
    if rel_a or rel_b:
        return bool(rel_a and rel_b) and _relations_equal(a, b)
    return expressions_equal(a, b)


_LONG_DECIMAL = re.compile(r"-?0*\.?0*(\d{12,})")  # 12+ significant digits after any leading zeros


def rationals_equal(a: str, ra: Fraction, b: str, rb: Fraction) -> bool:
    """Two plain numbers, given as text and exact value, are equal (see _machine_decimal_equal)."""
    return ra == rb or _machine_decimal_equal(a, ra, rb) or _machine_decimal_equal(b, rb, ra)


def _machine_decimal_equal(text: str, value: Fraction, other: Fraction) -> bool:
    """A decimal of 12+ significant digits (a machine's printout of a float, 0.0833333333333333) equals the
    exact value it rounds; shorter decimals are exact values of their own (0.142857 is not 1/7)."""
    m = _LONG_DECIMAL.fullmatch(text.replace(".", "", 1).lstrip("-")) if "." in text else None
    if m is None:
        return False
    places = len(text.split(".", 1)[1])
    return abs(value - other) <= Fraction(1, 10**places)


def _chain_value(s: str) -> str:
    """`x = 5+5+1 = 11` states 11: a chain of equalities ends in its value, as does `\\frac12 = \\frac{10}{9}`
    (an equality of two numbers; `7 = 11a + c` is an equation in unknowns and stays whole)."""
    parts = split_top(s, "=")
    if len(parts) < 2 or any(top_relations(p) for p in parts):
        return s
    if len(parts) > 2 or not any(re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", p)) for p in parts):
        return parts[-1]
    return s


# Each relation as (sign, canonical): `l > r` is `r - l < 0`, so a relation becomes d REL 0 with
# REL one of =, \ne, <, \leq, and d = l - r taken with the sign.
_CANONICAL = {
    "=": (1, "="),
    "\\ne": (1, "\\ne"),
    "<": (1, "<"),
    "\\lt": (1, "<"),
    "\\leq": (1, "\\leq"),
    ">": (-1, "<"),
    "\\gt": (-1, "<"),
    "\\geq": (-1, "\\leq"),
}


def _relations_equal(a: str, b: str) -> bool:
    """One relation each, the same set of points: `y = 2x + 3` is `2x - y = -3`, `x < 1` is `-x > -1`.

    Both become d REL 0 (see _CANONICAL); they are equal when REL is the same and d_a / d_b is one
    constant, non-zero for = and \\ne, positive for < and \\leq (a negative factor flips the sign).
    Chains (`1 < x < 3`) are not read; they compare as text.
    """
    rel_a, rel_b = top_relations(a), top_relations(b)
    if len(rel_a) != 1 or len(rel_b) != 1:
        return False
    (sign_a, op_a), (sign_b, op_b) = _CANONICAL[rel_a[0].group()], _CANONICAL[rel_b[0].group()]
    if op_a != op_b:
        return False
    la, ra = a[: rel_a[0].start()], a[rel_a[0].end() :]
    lb, rb = b[: rel_b[0].start()], b[rel_b[0].end() :]
    ratio = constant_ratio(f"{sign_a}*(({la})-({ra}))", f"{sign_b}*(({lb})-({rb}))")
    if ratio is None:
        return False
    return bool(ratio > 0) if op_a in ("<", "\\leq") else True


# ---- sympy ------------------------------------------------------------------------------------------

_POINTS = ("0.3719", "1.4137", "-0.6521", "2.2389")  # fixed, irregular values for the variables
DIGITS = 50
_RELATIVE_TOLERANCE = 1e-40


@lru_cache(maxsize=4096)
def to_sympy(s: str) -> Any | None:
    """The sympy value of a LaTeX expression, decimals exact and `i` the imaginary unit; None if unreadable."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return None
    import sympy
    from latex2sympy2_extended import latex2sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    try:
        expr = latex2sympy(
            s,
            normalization_config=NormalizationConfig(
                basic_latex=True,
                units=False,
                malformed_operators=False,
                nits=False,
                boxed="none",
                equations=False,
            ),
            conversion_config=ConversionConfig(
                interpret_as_mixed_fractions=True,
                interpret_simple_eq_as_assignment=False,
                lowercase_symbols=False,
            ),
        )
    except Exception:  # noqa: BLE001 - the parser raises many kinds; any of them means "not an expression we can read"
        return None
    if not isinstance(expr, sympy.Expr):
        return None
    replacements = {f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)}
    replacements.update({v: sympy.I for v in expr.free_symbols if v.name == "i"})
    return expr.xreplace(replacements) if replacements else expr


def warm_up() -> None:
    """Parse a few answers so the parser's lookahead tables are built (the first parses are ~10x slower).

    The grader's forkserver calls this once; every worker it forks then starts warm.
    """
    for text in (
        "\\frac{1}{2}+\\sqrt{3}x^2",
        "(x+1)^{2}-2\\pi i",
        "\\sqrt[3]{2}\\cdot 5!",
        "2\\sin x\\cos x",
        "\\log_2 8",
    ):
        to_sympy(text)
    to_sympy.cache_clear()


def _close(x: Any, y: Any) -> bool:
    """Equal to 50 significant digits, relative to the larger (so 1/2006! is not 1/2004!)."""
    return bool(abs(x - y) <= _RELATIVE_TOLERANCE * max(abs(x), abs(y)))


def _numeric(expr: Any) -> complex | None:
    import sympy

    value = sympy.N(expr, DIGITS)
    if not value.is_number or value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    return value


def _values_at_points(x: Any, y: Any) -> list[tuple[Any, Any]] | None:
    """(x, y) evaluated at the fixed points; None where either is not a finite number at a point."""
    import sympy

    symbols = sorted(x.free_symbols | y.free_symbols, key=lambda v: v.name)
    pairs = []
    for k in range(3):
        point = {v: sympy.Float(_POINTS[(k + j) % len(_POINTS)], DIGITS) for j, v in enumerate(symbols)}
        vx, vy = _numeric(x.xreplace(point)), _numeric(y.xreplace(point))
        if vx is not None and vy is not None:
            pairs.append((vx, vy))
    return pairs or None


def _finite(expr: Any) -> bool:
    """Whether an expression has a value: x/0 is complex infinity, and any x/0 equals any y/0 in sympy."""
    import sympy

    return not expr.has(sympy.zoo, sympy.nan)


def expressions_equal(a: str, b: str) -> bool:
    x, y = to_sympy(a), to_sympy(b)
    if x is None or y is None or not _finite(x) or not _finite(y):
        return False
    if x == y:
        return True
    if x.free_symbols != y.free_symbols:
        return False
    if not x.free_symbols:
        vx, vy = _numeric(x), _numeric(y)
        if vx is None or vy is None:
            return False
        return _close(vx, vy)
    pairs = _values_at_points(x, y)
    return pairs is not None and all(_close(vx, vy) for vx, vy in pairs)


def constant_ratio(a: str, b: str) -> Any | None:
    """The constant c with a = c * b at every point (a real number, not 0), or None if there is none.

    a = 0 and b = 0 are the same equation exactly when such a c exists.
    """
    x, y = to_sympy(a), to_sympy(b)
    if x is None or y is None or x.free_symbols != y.free_symbols or not _finite(x) or not _finite(y):
        return None
    if x == y:
        return 1  # the same expression up to sympy's own ordering (sums whose terms commute)
    pairs = _values_at_points(x, y)
    if not pairs or any(vy == 0 or vx == 0 for vx, vy in pairs):
        return None
    ratios = [vx / vy for vx, vy in pairs]
    if not ratios[0].is_real or not all(_close(r, ratios[0]) for r in ratios):
        return None
    return ratios[0]


# ---- the decision ---------------------------------------------------------------------------------


def asks_for_order(problem: str | None) -> bool:
    """Whether a problem that asks for several answers wants them in a given order."""
    return bool(problem) and bool(_ORDER_WORDS.search(problem))


def quick_decision(extracted: str | None, gold: str) -> bool | None:
    """The verdict where it needs no sympy (no answer, equal text, two plain numbers), else None."""
    if extracted is None:
        return False
    if len(extracted) > MAX_ANSWER_CHARS or len(str(gold)) > MAX_ANSWER_CHARS:
        return extracted.strip() == str(gold).strip()  # prose, not an answer: no regex or parser sees it
    a, b = normalize(extracted), normalize(str(gold))
    if not a or not b:
        return False
    if a == b:
        return True
    a, b = strip_prefix(a), strip_prefix(b)
    if a == b:
        return True
    ra, rb = as_rational(a), as_rational(b)
    if ra is not None and rb is not None:
        return rationals_equal(a, ra, b, rb)
    return None


def grade_math_answer(extracted: str | None, gold: str, problem: str | None = None) -> bool:
    """Whether an extracted answer equals the gold answer; `problem` says whether order matters."""
    quick = quick_decision(extracted, gold)
    if quick is not None:
        return quick
    a, b = normalize(extracted or ""), normalize(str(gold))
    if bool(top_relations(a)) != bool(top_relations(b)):  # `(p,q)=(3,2)` names the pair (3,2)
        a, b = strip_prefix(a), strip_prefix(b)
    return shapes_equal(shape(a), shape(b), asks_for_order(problem))
