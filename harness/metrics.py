"""Self-correction metrics of the SCoRe paper, as pure functions over graded records.

For turns a < b over n episodes (problems x samples), with c_t(e) = 1 when episode e is right at turn t:
    acc_tK            = (1/n) sum_e c_K(e)
    delta_ta_tb       = acc_tb - acc_ta
    delta_i2c_ta_tb   = (1/n) #{e : c_a(e) = 0 and c_b(e) = 1}   (wrong -> right)
    delta_c2i_ta_tb   = (1/n) #{e : c_a(e) = 1 and c_b(e) = 0}   (right -> wrong)
so that acc_tb = acc_ta + delta_i2c_ta_tb - delta_c2i_ta_tb exactly in the integer counts, which
summaries keep beside the fractions. Metrics are reported for each consecutive pair of turns and
for (t1, tK). Confidence intervals are percentile bootstrap intervals that resample problems (all
samples of a problem together), so every metric of one resample is computed on the same problems:
the intervals of the deltas are paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def turn_pairs(turns: int) -> list[tuple[int, int]]:
    """(a, b) turn pairs to report, 1-based: each consecutive pair, then (1, K) when K > 2."""
    pairs = [(t, t + 1) for t in range(1, turns)]
    if turns > 2:
        pairs.append((1, turns))
    return pairs


@dataclass(frozen=True)
class Graded:
    """The minimum the metrics need from a record: which problem, and right/wrong per turn."""

    problem_id: str
    correct: Sequence[bool]


def metric_names(turns: int) -> list[str]:
    names = ["n"] + [f"acc_t{t}" for t in range(1, turns + 1)]
    for a, b in turn_pairs(turns):
        names += [f"delta_t{a}_t{b}", f"delta_i2c_t{a}_t{b}", f"delta_c2i_t{a}_t{b}"]
    return names


def indicator_columns(correct: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-episode 0/1 columns whose means are the count-based metrics."""
    turns = correct.shape[1]
    names = [f"correct_t{t}" for t in range(1, turns + 1)]
    cols = [correct[:, t] for t in range(turns)]
    for a, b in turn_pairs(turns):
        ca, cb = correct[:, a - 1], correct[:, b - 1]
        names += [f"i2c_t{a}_t{b}", f"c2i_t{a}_t{b}"]
        cols += [(1 - ca) * cb, ca * (1 - cb)]
    return names, np.stack(cols, axis=1)


def metrics_from_means(names: list[str], means: np.ndarray, turns: int) -> dict[str, np.ndarray]:
    """Turn column means (any leading shape) into the named metrics."""
    col = {name: means[..., i] for i, name in enumerate(names)}
    out = {f"acc_t{t}": col[f"correct_t{t}"] for t in range(1, turns + 1)}
    for a, b in turn_pairs(turns):
        out[f"delta_t{a}_t{b}"] = out[f"acc_t{b}"] - out[f"acc_t{a}"]
        out[f"delta_i2c_t{a}_t{b}"] = col[f"i2c_t{a}_t{b}"]
        out[f"delta_c2i_t{a}_t{b}"] = col[f"c2i_t{a}_t{b}"]
    return out


def summarize(records: Sequence[Graded], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Metrics, integer counts and 95% bootstrap intervals for graded episodes.

    Returns {"metrics": {name: value}, "counts": {name: int}, "ci95": {name: [low, high]}}.
    """
    if not records:
        raise ValueError("no graded records to summarise")
    turns = len(records[0].correct)
    if any(len(r.correct) != turns for r in records):
        raise ValueError("records disagree on the number of turns")
    correct = np.array([[int(bool(c)) for c in r.correct] for r in records], dtype=np.int64)
    names, indicators = indicator_columns(correct)
    n = len(records)
    counts = {name: int(v) for name, v in zip(names, indicators.sum(axis=0))}
    point = metrics_from_means(names, indicators.sum(axis=0) / n, turns)
    metrics: dict[str, float | int] = {"n": n, **{k: float(point[k]) for k in metric_names(turns)[1:]}}

    # Cluster bootstrap over problems: per-problem sums, then resampled problem sets.
    problem_ids = sorted({r.problem_id for r in records})
    index = {pid: i for i, pid in enumerate(problem_ids)}
    rows = np.array([index[r.problem_id] for r in records])
    sums = np.zeros((len(problem_ids), indicators.shape[1]))
    np.add.at(sums, rows, indicators)
    sizes = np.bincount(rows, minlength=len(problem_ids)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(problem_ids), size=(resamples, len(problem_ids)))
    boot = metrics_from_means(names, sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)[:, None], turns)
    ci95 = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in boot.items()}
    out = {"metrics": metrics, "counts": {"n": n, **counts}, "ci95": ci95}
    passes = pass_at_k_by_turn(records)
    if passes:
        out["pass_at_k"] = passes
    return out


# --- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code") -------------------

PASS_AT_K = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct:

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

    computed as the product, which stays stable where the binomials overflow. 1.0 when n - c < k.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_by_turn(records: Sequence[Graded], ks: Sequence[int] = PASS_AT_K) -> dict[str, float]:
    """Mean pass@k over problems at each turn, `pass@{k}_t{t}`, for k in `ks` up to n and k = n, where n
    is the fewest samples a problem has; empty when every problem has one sample (pass@1 is then acc_t)."""
    by_problem: dict[str, list[Sequence[bool]]] = {}
    for r in records:
        by_problem.setdefault(r.problem_id, []).append(r.correct)
    n_min = min(len(v) for v in by_problem.values())
    if n_min < 2:
        return {}
    turns = len(records[0].correct)
    out = {}
    for k in sorted({k for k in ks if k <= n_min} | {n_min}):
        for t in range(turns):
            values = [pass_at_k(len(v), sum(bool(s[t]) for s in v), k) for v in by_problem.values()]
            out[f"pass@{k}_t{t + 1}"] = float(np.mean(values))
    return out
