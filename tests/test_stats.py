"""harness.stats: exact McNemar, transitions, grouping, and the paired difference between runs."""

from __future__ import annotations

import pytest

from harness.metrics import Graded
from harness.stats import (
    group_by,
    mcnemar_exact,
    paired_difference,
    transition,
    transition_shares,
)


@pytest.mark.parametrize(
    ("i2c", "c2i", "expected"),
    [
        # m = 6 discordant, all one way: 2 * C(6,0) / 2^6 = 2/64.
        (0, 6, 0.03125),
        # m = 6, min 1: 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7/64 = 14/64.
        (1, 5, 0.21875),
        (5, 1, 0.21875),
        # m = 10, min 0: 2 / 1024.
        (10, 0, 0.001953125),
        # m = 6, min 3: 2 * (1 + 6 + 15 + 20)/64 = 84/64 > 1, capped at 1.
        (3, 3, 1.0),
        # m = 3, min 1: 2 * (1 + 3)/8 = 1.
        (1, 2, 1.0),
        # m = 3, min 0: 2 * 1/8.
        (3, 0, 0.25),
        # No discordant episode: no evidence either way.
        (0, 0, 1.0),
    ],
)
def test_exact_mcnemar_matches_the_binomial_tail_worked_by_hand(i2c, c2i, expected):
    assert mcnemar_exact(i2c, c2i) == pytest.approx(expected, rel=1e-12)


def test_exact_mcnemar_stays_finite_for_thousands_of_discordant_episodes():
    # m = 2000 split evenly: P(X <= 1000) is just over 1/2, so the two-sided p is capped at 1.
    assert mcnemar_exact(1000, 1000) == 1.0
    assert 0.0 < mcnemar_exact(900, 1100) < 1e-5


def test_exact_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_transition_names_read_from_first_to_second_turn():
    assert [transition(a, b) for a, b in [(True, True), (False, True), (True, False), (False, False)]] == [
        "c2c",
        "i2c",
        "c2i",
        "i2i",
    ]


def test_transition_shares_recover_the_papers_base_row():
    # SCoRe paper, MATH base: Acc@t1 52.6, Δi→c 4.6, Δc→i 15.8 ->
    # right→right 52.6 - 15.8 = 36.8, wrong→wrong 100 - 52.6 - 4.6 = 42.8.
    shares = transition_shares(0.526, 0.046, 0.158)
    assert shares == pytest.approx({"c2c": 0.368, "i2c": 0.046, "c2i": 0.158, "i2i": 0.428})
    assert sum(shares.values()) == pytest.approx(1.0)


def test_group_by_orders_levels_numerically_and_missing_values_last():
    items = [("x", 10), ("y", 2), ("z", None), ("w", 1), ("v", 2)]
    groups = group_by(items, key=lambda item: item[1])
    assert list(groups) == [1, 2, 10, None]
    assert groups[2] == [("y", 2), ("v", 2)]
    assert list(group_by(["Geometry", "Algebra", "Prealgebra"], key=lambda s: s)) == [
        "Algebra",
        "Geometry",
        "Prealgebra",
    ]


def _records(verdicts: dict[str, list[tuple[bool, bool]]]) -> list[Graded]:
    return [Graded(pid, list(v)) for pid, samples in verdicts.items() for v in samples]


def test_paired_difference_of_identical_turn_one_verdicts_is_exactly_zero_in_every_resample():
    # Same turn-1 verdicts on every problem: a paired resample can never separate them, whereas
    # each run's own acc_t1 interval is wide (2 of 4 right).
    a = _records({"p1": [(True, True)], "p2": [(False, True)], "p3": [(True, True)], "p4": [(False, True)]})
    b = _records({"p1": [(True, False)], "p2": [(False, False)], "p3": [(True, True)], "p4": [(False, False)]})
    result = paired_difference(a, b)
    assert result["problems"] == 4
    assert result["metrics"]["acc_t1"] == 0.0
    assert result["ci95"]["acc_t1"] == [0.0, 0.0]
    # acc_t2: A 4/4, B 1/4 -> +3/4; Δi→c: A 2/4, B 0/4; Δc→i: A 0, B 1/4 (p1).
    assert result["metrics"]["acc_t2"] == pytest.approx(0.75)
    assert result["metrics"]["delta_i2c_t1_t2"] == pytest.approx(0.5)
    assert result["metrics"]["delta_c2i_t1_t2"] == pytest.approx(-0.25)
    low, high = result["ci95"]["acc_t2"]
    assert 0.0 < low <= 0.75 <= high <= 1.0


def test_paired_difference_uses_only_the_problems_both_runs_ran():
    # B also ran p3 (right at both turns); it must not count: on {p1, p2} A is 1/2 -> 2/2,
    # B is 0/2 -> 1/2.
    a = _records({"p1": [(True, True)], "p2": [(False, True)]})
    b = _records({"p1": [(False, True)], "p2": [(False, False)], "p3": [(True, True)]})
    result = paired_difference(a, b)
    assert (result["problems"], result["n_a"], result["n_b"]) == (2, 2, 2)
    assert result["metrics"]["acc_t1"] == pytest.approx(0.5)
    assert result["metrics"]["acc_t2"] == pytest.approx(0.5)
    assert result["metrics"]["delta_t1_t2"] == pytest.approx(0.0)


def test_paired_difference_weighs_problems_by_their_samples_and_compares_shared_turns():
    # A has two samples of p1 (both right at t1) and one of p2 (wrong): acc_t1 = 2/3.
    # B has 3 turns; only the metrics of 2 turns are compared. B acc_t1 = 1/2.
    a = [Graded("p1", [True, True]), Graded("p1", [True, False]), Graded("p2", [False, False])]
    b = [Graded("p1", [True, True, True]), Graded("p2", [False, False, True])]
    result = paired_difference(a, b)
    assert result["turns"] == 2
    assert set(result["metrics"]) == {"acc_t1", "acc_t2", "delta_t1_t2", "delta_i2c_t1_t2", "delta_c2i_t1_t2"}
    assert result["metrics"]["acc_t1"] == pytest.approx(2 / 3 - 1 / 2)
    # acc_t2: A 1/3, B 1/2.
    assert result["metrics"]["acc_t2"] == pytest.approx(1 / 3 - 1 / 2)


def test_paired_difference_refuses_runs_without_shared_problems():
    with pytest.raises(ValueError, match="share no problems"):
        paired_difference([Graded("a", [True, True])], [Graded("b", [True, True])])
