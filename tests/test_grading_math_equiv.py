"""The equivalence decision's parts: exact numbers, answer shapes, and bounds on the work it does."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from harness.grading.math_equiv import as_rational, asks_for_order, grade_math_answer, quick_decision, shape
from harness.grading.math_normalize import normalize


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7", Fraction(7)),
        ("-2.50", Fraction(-5, 2)),  # a decimal is read exactly, not as a float
        (".5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        (r"\frac{-6}{4}", Fraction(-3, 2)),
        (r"-\frac{1}{3}", Fraction(-1, 3)),
        (r"2\frac{1}{4}", Fraction(9, 4)),  # mixed number: 2 + 1/4
        (r"0.1\overline{6}", Fraction(1, 6)),  # 0.1666...: 1/10 + 6/90
        (r"1.\overline{142857}", Fraction(8, 7)),  # 1 + 142857/999999 = 1 + 1/7
        (r"\frac{1}{0}", None),  # no value, never an exception
        (r"\sqrt{2}", None),  # not a plain number: left to sympy
    ],
)
def test_plain_numbers_have_exact_values(text, value):
    assert as_rational(text) == value


def test_shapes_separate_tuples_intervals_sets_and_products():
    assert shape("(1,2]").kind == "bracketed" and shape("(1,2]").brackets == "(]"
    assert shape(r"\{1,2\}").kind == "set"
    assert shape("1,2,3").kind == "list" and len(shape("1,2,3").parts) == 3
    assert shape("(x+1)(x-1)").kind == "scalar"  # two groups side by side are a product, not a tuple
    assert shape("(3)").kind == "scalar"
    assert shape(r"(0,1)\cup(2,3)").kind == "union"
    assert shape(r"\begin{pmatrix}1&2\\3&4\end{pmatrix}").kind == "matrix"


def test_plus_minus_is_two_answers():
    parts = shape(r"1\pm\sqrt{2}").parts
    assert [p.text for p in parts] == [r"1+(\sqrt{2})", r"1-(\sqrt{2})"]


def test_order_matters_only_when_the_problem_asks_for_it():
    assert asks_for_order("List the roots in increasing order.")
    assert asks_for_order("Enter the ordered list of values.")
    assert not asks_for_order("Enter all the solutions, separated by commas.")
    assert not asks_for_order(None)


def test_plain_numbers_and_equal_text_are_decided_without_sympy():
    # quick_decision settles these in the grader's process; None means "ask a worker".
    assert quick_decision("10.0", "10") is True
    assert quick_decision("0.5", r"\frac12") is True
    assert quick_decision("50", "0.5") is False
    assert quick_decision(None, "3") is False
    assert quick_decision("", "3") is False
    assert quick_decision(r"\sqrt{27}", r"3\sqrt3") is None


def test_an_empty_gold_answer_matches_nothing():
    # Two MATH train problems box nothing; no response can be right about them.
    assert grade_math_answer("", "") is False
    assert grade_math_answer("5", "") is False


@pytest.mark.parametrize(
    "text",
    [
        "5\\text{ " + "min" * 25 + "x}",  # "min" is also "m"+"in": exponential for a naive unit regex
        "1" * 1000 + "." + "0" * 999 + "1",  # long digit runs against the trailing-zero rule
        "(" * 1500 + "1",  # unbalanced brackets
        "x=" * 900,
    ],
)
def test_normalising_a_pathological_answer_takes_milliseconds(text):
    # Normalising runs in the grader's own process, where nothing can stop it; it must stay linear.
    start = time.perf_counter()
    normalize(text)
    quick_decision(text, "1")
    assert time.perf_counter() - start < 1.0
