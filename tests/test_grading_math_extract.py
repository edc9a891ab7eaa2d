"""Extraction details that the labelled pairs do not pin down on their own."""

from __future__ import annotations

import pytest

from harness.grading.math import extract_answer, last_boxed
from harness.grading.math_extract import boxed_answers, unbox


def test_last_boxed_balances_nested_braces():
    # The box closes at the brace that balances its opening one, not at the first "}".
    assert last_boxed(r"$\boxed{\frac{1}{\sqrt{2}}}$ and more") == r"\frac{1}{\sqrt{2}}"


def test_escaped_braces_inside_a_box_are_not_grouping():
    # \{ and \} are set braces, so they neither open nor close the box.
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"


def test_a_box_inside_a_box_is_found_once_as_the_outer_box():
    assert [content for _, _, content in boxed_answers(r"\boxed{\boxed{3}} then \fbox{4}")] == [
        r"\boxed{3}",
        "4",
    ]


def test_unbox_strips_any_depth_of_boxes_but_keeps_a_box_among_other_text():
    assert unbox(r"\boxed{\boxed{\boxed{8}}}") == "8"
    assert unbox(r"\boxed{1} + \boxed{2}") == r"\boxed{1} + \boxed{2}"  # two boxes: not one answer in a box


def test_the_last_number_fallback_is_off_by_default_and_explicit_when_on():
    response = "Adding 3 and 4 gives 7, and doubling gives 14."
    assert extract_answer(response) is None
    assert extract_answer(response, fallback="last_number") == "14"


def test_the_fallback_never_overrides_a_stated_answer():
    assert extract_answer(r"So $\boxed{6}$; there were 14 steps.", fallback="last_number") == "6"


def test_an_unknown_fallback_is_an_error_not_a_silent_default():
    with pytest.raises(ValueError, match="last_number"):
        extract_answer("no answer", fallback="first_number")


def test_a_long_hostile_response_is_scanned_in_linear_time():
    # 200,000 characters of unclosed braces and stray "answer is" phrases; regex backtracking
    # or a quadratic brace scan would take minutes, a linear scan milliseconds.
    import time

    response = ("\\boxed{" + "{" * 50) * 2000 + " the answer is " * 2000
    start = time.perf_counter()
    extract_answer(response)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    "response",
    ["\\(" * 60_000 + ".", "\\[x" * 60_000 + ".", "$a " * 60_000 + ".", "So $x$. " * 30_000],
    ids=["unclosed-parens", "unclosed-brackets", "lone-dollars", "many-sentences"],
)
def test_unclosed_math_delimiters_are_read_without_a_quadratic_scan(response):
    # Every opener looking for its closer to the end (a lazy regex, or a scan per opener) is
    # quadratic: 60,000 unclosed "\(" took 24 s that way at load 15; bisection takes under a second.
    import time

    start = time.perf_counter()
    extract_answer(response)
    assert time.perf_counter() - start < 5


def test_a_math_span_in_a_concluding_sentence_separates_the_numbers_around_it():
    # "3$x$4" reads as the words "3 4": the number that ends the sentence is 4, never 34.
    assert extract_answer("So the sum is 3$x$4.") == "4"
