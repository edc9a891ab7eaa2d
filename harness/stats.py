"""Tests and groupings that compare graded records: is a Δ real, where does it come from.

Pure functions over `harness.metrics.Graded` records (and plain dicts for grouping); the per-group
metrics themselves come from `harness.metrics.summarize`, so a breakdown row means exactly what the
run's summary row means.

For one episode right/wrong at turns a < b, its transition is
    c2c (right -> right), i2c (wrong -> right), c2i (right -> wrong), i2i (wrong -> wrong),
so n = #c2c + #i2c + #c2i + #i2i, Acc@ta = (#c2c + #c2i) / n and Acc@tb = (#c2c + #i2c) / n.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from math import comb
from typing import Any, TypeVar

import numpy as np

from harness.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Graded,
    indicator_columns,
    metric_names,
    metrics_from_means,
)

TRANSITIONS = ("c2c", "i2c", "c2i", "i2i")
TRANSITION_LABELS = {
    "c2c": "right→right",
    "i2c": "wrong→right",
    "c2i": "right→wrong",
    "i2i": "wrong→wrong",
}

T = TypeVar("T")


def transition(correct_a: bool, correct_b: bool) -> str:
    """The transition name of one episode between two turns (see the module docstring)."""
    return ("i", "c")[bool(correct_a)] + "2" + ("i", "c")[bool(correct_b)]


def transition_shares(acc_a: float, i2c: float, c2i: float) -> dict[str, float]:
    """Shares of the four transitions from a run's Acc@ta, Δi→c and Δc→i (all shares of n).

    From the identities in the module docstring: c2c = Acc@ta - Δc→i and i2i = 1 - Acc@ta - Δi→c,
    which is how the transitions of a published row (which gives only these three) are recovered.
    """
    return {"c2c": acc_a - c2i, "i2c": i2c, "c2i": c2i, "i2i": 1.0 - acc_a - i2c}


def mcnemar_exact(i2c: int, c2i: int) -> float:
    """Two-sided exact McNemar p-value for paired right/wrong outcomes at two turns.

    Only discordant episodes carry information: under H0 (both turns equally accurate) each of the
    m = i2c + c2i discordant episodes is wrong->right or right->wrong with probability 1/2, so
        p = min(1, 2 * sum_{k=0}^{min(i2c, c2i)} C(m, k) / 2^m),   and p = 1 when m = 0.
    Exact (binomial) rather than chi-squared because self-correction studies often have a handful
    of discordant episodes, where the chi-squared approximation is poor.
    """
    if i2c < 0 or c2i < 0:
        raise ValueError("McNemar counts must be non-negative")
    m = i2c + c2i
    if m == 0:
        return 1.0
    tail = sum(comb(m, k) for k in range(min(i2c, c2i) + 1))
    return min(1.0, 2 * tail / 2**m)


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Any, list[T]]:
    """Items grouped by key, groups in sorted key order (numbers before strings), items in input order."""
    groups: dict[Any, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return dict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(value: Any) -> tuple:
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, (int, float)):
        return (0, value, "")
    text = str(value)
    return (0, int(text), "") if text.isdigit() else (1, text)


def _problem_sums(records: Sequence[Graded], problem_ids: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-problem sums of the metric indicator columns and per-problem episode counts."""
    correct = np.array([[int(bool(c)) for c in r.correct] for r in records], dtype=np.int64)
    names, indicators = indicator_columns(correct)
    index = {pid: i for i, pid in enumerate(problem_ids)}
    rows = np.array([index[r.problem_id] for r in records])
    sums = np.zeros((len(problem_ids), indicators.shape[1]))
    np.add.at(sums, rows, indicators)
    sizes = np.bincount(rows, minlength=len(problem_ids)).astype(float)
    return names, sums, sizes


def paired_difference(
    records_a: Sequence[Graded],
    records_b: Sequence[Graded],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Run A minus run B on the problems both ran, with a paired bootstrap interval per metric.

    For every metric m shared by both runs (the metrics of min(K_A, K_B) turns),
        diff_m = m(A restricted to P) - m(B restricted to P),   P = problems(A) ∩ problems(B),
    and the 95% interval is the 2.5/97.5 percentile of diff_m over resamples of P with replacement,
    where one resample of P is used for both runs. Pairing cancels the problem-to-problem variance
    both runs share (hard problems are hard for both), so the interval is much narrower than the two
    runs' own intervals suggest, and its bounds answer whether A and B really differ.

    Returns {"problems": |P|, "n_a": episodes of A on P, "n_b": ..., "metrics": {m: diff},
    "ci95": {m: [low, high]}}.
    """
    shared = sorted({r.problem_id for r in records_a} & {r.problem_id for r in records_b})
    if not shared:
        raise ValueError("the two runs share no problems; a paired difference needs the same problems")
    keep = set(shared)
    a = [r for r in records_a if r.problem_id in keep]
    b = [r for r in records_b if r.problem_id in keep]
    turns = min(len(a[0].correct), len(b[0].correct))
    a = [Graded(r.problem_id, list(r.correct)[:turns]) for r in a]
    b = [Graded(r.problem_id, list(r.correct)[:turns]) for r in b]
    names_a, sums_a, sizes_a = _problem_sums(a, shared)
    names_b, sums_b, sizes_b = _problem_sums(b, shared)
    wanted = metric_names(turns)[1:]

    def metrics(names, sums, sizes):
        return metrics_from_means(names, sums.sum(axis=-2) / sizes.sum(axis=-1)[..., None], turns)

    point_a, point_b = metrics(names_a, sums_a, sizes_a), metrics(names_b, sums_b, sizes_b)
    draws = np.random.default_rng(seed).integers(0, len(shared), size=(resamples, len(shared)))
    boot_a = metrics(names_a, sums_a[draws], sizes_a[draws])
    boot_b = metrics(names_b, sums_b[draws], sizes_b[draws])
    diff = {m: float(point_a[m] - point_b[m]) for m in wanted}
    ci95 = {}
    for m in wanted:
        d = boot_a[m] - boot_b[m]
        ci95[m] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
    return {
        "problems": len(shared),
        "n_a": len(a),
        "n_b": len(b),
        "turns": turns,
        "metrics": diff,
        "ci95": ci95,
    }
