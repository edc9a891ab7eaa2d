"""Self-correction metrics on made-up records, with every expected value counted by hand."""

import pytest

from harness.metrics import Graded, metric_names, summarize, turn_pairs


def _records(rows):
    return [Graded(problem_id=f"p{i}", correct=row) for i, row in enumerate(rows)]


def test_two_turns_hand_counted():
    # 5 episodes: t1 right = {0, 1, 2} -> 3/5; t2 right = {0, 3, 4} -> 3/5.
    # wrong->right: episodes 3, 4 -> 2/5; right->wrong: episodes 1, 2 -> 2/5.
    rows = [(1, 1), (1, 0), (1, 0), (0, 1), (0, 1)]
    m = summarize(_records(rows))["metrics"]
    assert m["n"] == 5
    assert m["acc_t1"] == pytest.approx(0.6)
    assert m["acc_t2"] == pytest.approx(0.6)
    assert m["delta_t1_t2"] == pytest.approx(0.0)
    assert m["delta_i2c_t1_t2"] == pytest.approx(0.4)
    assert m["delta_c2i_t1_t2"] == pytest.approx(0.4)


def test_three_turns_reports_consecutive_pairs_and_first_to_last():
    # 4 episodes over 3 turns:
    #   e0: 0 1 1   e1: 1 0 1   e2: 1 1 0   e3: 0 0 0
    # acc: t1 = 2/4, t2 = 2/4, t3 = 2/4
    # (t1,t2): i2c = {e0} = 1/4, c2i = {e1} = 1/4
    # (t2,t3): i2c = {e1} = 1/4, c2i = {e2} = 1/4
    # (t1,t3): i2c = {e0} = 1/4, c2i = {e2} = 1/4
    rows = [(0, 1, 1), (1, 0, 1), (1, 1, 0), (0, 0, 0)]
    s = summarize(_records(rows))
    m = s["metrics"]
    assert list(m) == metric_names(3)
    assert turn_pairs(3) == [(1, 2), (2, 3), (1, 3)]
    for t in (1, 2, 3):
        assert m[f"acc_t{t}"] == pytest.approx(0.5)
    for a, b in [(1, 2), (2, 3), (1, 3)]:
        assert m[f"delta_i2c_t{a}_t{b}"] == pytest.approx(0.25)
        assert m[f"delta_c2i_t{a}_t{b}"] == pytest.approx(0.25)
        assert m[f"delta_t{a}_t{b}"] == pytest.approx(0.0)
    assert s["counts"] == {
        "n": 4,
        "correct_t1": 2,
        "correct_t2": 2,
        "correct_t3": 2,
        "i2c_t1_t2": 1,
        "c2i_t1_t2": 1,
        "i2c_t2_t3": 1,
        "c2i_t2_t3": 1,
        "i2c_t1_t3": 1,
        "c2i_t1_t3": 1,
    }


def test_three_turns_uneven():
    # e0: 0 0 1   e1: 0 1 1   e2: 1 1 1
    # acc: 1/3, 2/3, 3/3; (t1,t3): i2c = {e0, e1} = 2/3, c2i = 0
    m = summarize(_records([(0, 0, 1), (0, 1, 1), (1, 1, 1)]))["metrics"]
    assert (m["acc_t1"], m["acc_t2"], m["acc_t3"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert m["delta_t1_t3"] == pytest.approx(2 / 3)
    assert m["delta_i2c_t1_t3"] == pytest.approx(2 / 3)
    assert m["delta_c2i_t1_t3"] == 0.0


def test_identity_holds_exactly_in_counts():
    rows = [(1, 0), (0, 1), (0, 1), (1, 1), (0, 0), (0, 1), (1, 0)]
    c = summarize(_records(rows))["counts"]
    assert c["correct_t2"] == c["correct_t1"] + c["i2c_t1_t2"] - c["c2i_t1_t2"]


def test_bootstrap_interval_contains_point_and_is_degenerate_when_all_agree():
    s = summarize(_records([(1, 1)] * 6 + [(0, 0)] * 4))
    low, high = s["ci95"]["acc_t1"]
    assert low <= s["metrics"]["acc_t1"] <= high
    assert low < high
    # Every episode keeps its verdict, so the deltas are exactly 0 in every resample.
    assert s["ci95"]["delta_t1_t2"] == [0.0, 0.0]


def test_samples_of_one_problem_are_resampled_together():
    # Two problems, each with 2 samples that agree. A cluster resample can only pick whole
    # problems, so acc_t1 takes only the values 0, 0.5 and 1 in any resample.
    recs = [Graded("a", (1, 1)), Graded("a", (1, 1)), Graded("b", (0, 0)), Graded("b", (0, 0))]
    s = summarize(recs, resamples=200)
    assert s["metrics"]["acc_t1"] == 0.5
    assert s["ci95"]["acc_t1"][0] in (0.0, 0.5) and s["ci95"]["acc_t1"][1] in (0.5, 1.0)


def test_single_turn_has_no_deltas():
    m = summarize(_records([(1,), (0,)]))["metrics"]
    assert m == {"n": 2, "acc_t1": 0.5}


def test_rejects_empty_and_ragged_records():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([Graded("a", (1, 0)), Graded("b", (1,))])
