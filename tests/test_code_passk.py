"""pass@k: the unbiased estimator, checked against numbers worked out by hand."""

from __future__ import annotations

from math import comb

import pytest

from harness.metrics import Graded, pass_at_k, pass_at_k_by_turn, summarize


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_matches_the_binomial_formula():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - comb(187, 100) / comb(200, 100))


def test_pass_at_k_is_one_when_every_draw_of_k_must_contain_a_correct_sample():
    assert pass_at_k(4, 2, 3) == 1.0


def test_pass_at_k_is_zero_without_a_correct_sample():
    assert pass_at_k(10, 0, 5) == 0.0


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_pass_at_k_by_turn_averages_over_problems_per_turn():
    records = [
        Graded("a", [False, True]),
        Graded("a", [False, True]),
        Graded("b", [True, True]),
        Graded("b", [False, False]),
    ]
    # turn 1: a 0/2 -> 0, b 1/2 -> 0.5 (k=1) and 1.0 (k=2); turn 2: a 2/2, b 1/2.
    assert pass_at_k_by_turn(records) == {
        "pass@1_t1": 0.25,
        "pass@1_t2": 0.75,
        "pass@2_t1": 0.5,
        "pass@2_t2": 1.0,
    }


def test_with_one_sample_per_problem_no_pass_at_k_is_reported():
    records = [Graded("a", [True]), Graded("b", [False])]
    assert pass_at_k_by_turn(records) == {}
    assert "pass_at_k" not in summarize(records, resamples=10)


def test_summaries_carry_pass_at_k_when_there_are_samples():
    records = [Graded("a", [False]), Graded("a", [True])]
    assert summarize(records, resamples=10)["pass_at_k"] == {"pass@1_t1": 0.5, "pass@2_t1": 1.0}
