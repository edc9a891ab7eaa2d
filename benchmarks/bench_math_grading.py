"""MATH grading: agreement with the hand labels, and throughput, beside math-verify on the same inputs.

    python benchmarks/bench_math_grading.py [--n 5000] [--processes 2]

1. Agreement on the project's labelled set (tests/data/math_grading_labels.yaml), per category.
2. Throughput on `--n` responses of typical length: MATH test solutions (../shared/data/math/test.jsonl)
   with, for every other one, the final box replaced by the answer of a different problem of the
   same subject, so about half are wrong and need a real comparison rather than a text match.
   Ours runs on `--processes` worker processes; math-verify runs as it ships (one process, on the
   main thread, with its signal-based timeouts), and also on a pool of the same size.
Both graders see the same response strings and the same gold answers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.data import Problem
from harness.grading.math import MathGrader
from harness.grading.math_equiv import quick_decision
from harness.grading.math_extract import boxed_answers, extract_answer

LABELS = REPO / "tests" / "data" / "math_grading_labels.yaml"
TEST = REPO.parent / "shared" / "data" / "math" / "test.jsonl"


def labelled_cases() -> list[tuple[str, str, str, str | None, bool]]:
    """(category, response, gold, problem, correct) for every labelled pair."""
    sections = yaml.safe_load(LABELS.read_text())
    return [
        (
            category,
            e["response"] if "response" in e else f"The final answer is $\\boxed{{{e['given']}}}$.",
            str(e["gold"]),
            e.get("problem"),
            bool(e["correct"]),
        )
        for category, entries in sections.items()
        for e in entries
    ]


def throughput_cases(n: int) -> list[tuple[str, str]]:
    """(response, gold) pairs: test solutions, every other one with another problem's answer boxed."""
    records = [json.loads(line) for line in TEST.read_text().splitlines()[:n]]
    by_subject: dict[str, list[str]] = {}
    for r in records:
        by_subject.setdefault(r["subject"], []).append(r["answer"])
    cases = []
    for i, r in enumerate(records):
        solution = r["solution"]
        if i % 2:
            answers = by_subject[r["subject"]]
            other = next(
                (a for k, a in enumerate(answers[i % len(answers) :] + answers) if a.strip() != r["answer"].strip()),
                r["answer"],
            )
            start, end, _ = boxed_answers(solution)[-1]
            solution = solution[:start] + "\\boxed{" + other + "}" + solution[end:]
        cases.append((solution, r["answer"]))
    return cases


def ours(cases: list[tuple[str, str, str | None]], processes: int) -> tuple[list[bool], float, int]:
    with MathGrader(processes=processes) as grader:
        grader.pool().map([("1", "1", None)])  # start the workers outside the timing, as a run's grader would be
        start = time.perf_counter()
        verdicts = grader.grade(
            [(r, Problem(str(i), g, {"problem": p} if p else {})) for i, (r, g, p) in enumerate(cases)]
        )
        elapsed = time.perf_counter() - start
    return [v.correct for v in verdicts], elapsed, sum(v.detail == "timeout" for v in verdicts)


def math_verify_one(args: tuple[str, str]) -> bool:
    from math_verify import parse, verify

    response, gold = args
    try:
        return bool(verify(parse("\\boxed{" + gold + "}"), parse(response)))
    except Exception:  # noqa: BLE001 - math-verify raises many kinds; any is a failed grade, as in its own use
        return False


def run_math_verify(cases: list[tuple[str, str]], processes: int) -> tuple[list[bool], float]:
    if processes <= 1:
        start = time.perf_counter()
        out = [math_verify_one(c) for c in cases]
        return out, time.perf_counter() - start
    with multiprocessing.get_context("forkserver").Pool(processes) as pool:
        pool.map(math_verify_one, [("1", "1")] * processes)
        start = time.perf_counter()
        out = pool.map(math_verify_one, cases, chunksize=16)
        return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="responses for the throughput run")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for both graders' pools")
    args = parser.parse_args()
    try:
        import math_verify  # noqa: F401
    except ImportError:
        sys.exit("math-verify is not installed: pip install -e '.[bench]'")

    cases = labelled_cases()
    truth = [c[4] for c in cases]
    ours_labels, _, _ = ours([(r, g, p) for _, r, g, p, _ in cases], args.processes)
    mv_labels, _ = run_math_verify([(r, g) for _, r, g, _, _ in cases], 1)
    print(f"labelled set: {len(cases)} pairs ({sum(truth)} correct, {len(truth) - sum(truth)} near misses)")
    print(f"{'':24}{'score-eval':>12}{'math-verify':>14}")
    for name in dict.fromkeys(c[0] for c in cases):
        idx = [i for i, c in enumerate(cases) if c[0] == name]
        row = [sum(labels[i] == truth[i] for i in idx) for labels in (ours_labels, mv_labels)]
        print(f"  agree, {name:<16}{row[0]:>6}/{len(idx):<5}{row[1]:>8}/{len(idx)}")
    for label, want in (("right answers", True), ("near misses", False)):
        idx = [i for i, t in enumerate(truth) if t is want]
        row = [sum(labels[i] == want for i in idx) for labels in (ours_labels, mv_labels)]
        print(f"  agree, {label:<16}{row[0]:>6}/{len(idx):<5}{row[1]:>8}/{len(idx)}")
    total = [sum(a == b for a, b in zip(labels, truth)) for labels in (ours_labels, mv_labels)]
    print(
        f"  agree, all             {total[0]:>6}/{len(truth):<5}{total[1]:>8}/{len(truth)}"
        f"   ({100 * total[0] / len(truth):.1f}% vs {100 * total[1] / len(truth):.1f}%)"
    )

    if not TEST.exists():
        print(f"throughput: skipped, {TEST} is absent")
        return
    pairs = throughput_cases(args.n)
    ours_out, ours_s, timeouts = ours([(r, g, None) for r, g in pairs], args.processes)
    mv1_out, mv1_s = run_math_verify(pairs, 1)
    _, mvp_s = run_math_verify(pairs, args.processes)
    n = len(pairs)
    symbolic = sum(quick_decision(extract_answer(r), g) is None for r, g in pairs)
    print(f"\nthroughput: {n} responses (MATH test solutions, every other with a wrong boxed answer);")
    print(f"  {symbolic} of them need sympy (the rest are settled as text or plain numbers)")
    print(
        f"  score-eval, {args.processes} worker processes:   {ours_s:6.1f} s  {n / ours_s:7.0f} responses/s"
        f"  ({sum(ours_out)} graded correct, {timeouts} timeouts)"
    )
    print(
        f"  math-verify, 1 process (as shipped): {mv1_s:6.1f} s  {n / mv1_s:7.0f} responses/s"
        f"  ({sum(mv1_out)} graded correct)"
    )
    print(f"  math-verify, pool of {args.processes} processes:    {mvp_s:6.1f} s  {n / mvp_s:7.0f} responses/s")
    disagree = [i for i, (a, b) in enumerate(zip(ours_out, mv1_out)) if a != b]
    expected = [i % 2 == 0 for i in range(n)]
    print(
        f"  verdicts that match the construction (even: right, odd: another problem's answer): "
        f"score-eval {sum(a == e for a, e in zip(ours_out, expected))}/{n}, "
        f"math-verify {sum(a == e for a, e in zip(mv1_out, expected))}/{n}"
    )
    print(f"  score-eval and math-verify disagree on {len(disagree)} of {n}")


if __name__ == "__main__":
    main()
