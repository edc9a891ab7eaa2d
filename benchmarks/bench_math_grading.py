"""MATH grading: agreement with labels, and throughput, beside math-verify on the same inputs.

    python benchmarks/bench_math_grading.py [--n 5000] [--processes 2] [--list-disagreements]

1. Agreement on the project's labelled set (tests/data/math_grading_labels.yaml), per category.
2. Agreement with public graders' own labelled test cases (tests/data/math_public_cases.jsonl:
   Math-Verify, lighteval, NeMo-Skills, hendrycks/math; see math_public_cases.md), per suite:
   agreement, false positives (graded right where the label says wrong), false negatives, and
   cases per second; then a total over distinct cases and one over the labels sound for MATH.
   `--list-disagreements` prints every distinct case where score-eval disagrees with the label.
3. The 12,500 MATH train+test reference solutions graded against their own `answer`.
4. Cut-off responses: 2,000 MATH test solutions cut at a random word before their final box. A
   response cut off before it concludes states nothing, so "graded right" there is a false positive
   of leniency (or an earlier box of an alternative solution, which both graders see alike).
5. Throughput on `--n` responses of typical length: MATH test solutions (../shared/data/math/test.jsonl)
   with, for every other one, the final box replaced by the answer of a different problem of the
   same subject, so about half are wrong and need a real comparison rather than a text match.
   Ours runs on `--processes` worker processes; math-verify runs as it ships (one process, on the
   main thread, with its signal-based timeouts), and also on a pool of the same size.
Both graders see the same response strings and the same gold answers; math-verify is called the
way its README shows, `verify(parse("$" + gold + "$"), parse(response))`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.data import Problem
from harness.grading import Verdict
from harness.grading.math import MathGrader
from harness.grading.math_equiv import quick_decision
from harness.grading.math_extract import boxed_answers, extract_answer
from tests import math_public_cases as public

LABELS = REPO / "tests" / "data" / "math_grading_labels.yaml"
MATH_DATA = REPO.parent / "shared" / "data" / "math"
TEST = MATH_DATA / "test.jsonl"


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


def ours_verdicts(cases: list[tuple[str, str, str | None]], processes: int) -> tuple[list[Verdict], float]:
    with MathGrader(processes=processes) as grader:
        grader.pool().map([("1", "1", None)])  # start the workers outside the timing, as a run's grader would be
        start = time.perf_counter()
        verdicts = grader.grade(
            [(r, Problem(str(i), g, {"problem": p} if p else {})) for i, (r, g, p) in enumerate(cases)]
        )
        return verdicts, time.perf_counter() - start


def ours(cases: list[tuple[str, str, str | None]], processes: int) -> tuple[list[bool], float, int]:
    verdicts, elapsed = ours_verdicts(cases, processes)
    return [v.correct for v in verdicts], elapsed, sum(v.detail == "timeout" for v in verdicts)


def math_verify_one(args: tuple[str, str]) -> bool:
    from math_verify import parse, verify

    response, gold = args
    try:
        return bool(verify(parse("$" + gold + "$"), parse(response)))
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


def agreement(verdicts: list[bool], expected: list[bool]) -> tuple[int, int, int]:
    """(agreements, false positives: graded right where the label says wrong, false negatives)."""
    pairs = list(zip(verdicts, expected))
    return sum(v == e for v, e in pairs), sum(v and not e for v, e in pairs), sum(e and not v for v, e in pairs)


def public_row(
    name: str,
    idx: list[int],
    cases: list[dict],
    ours_v: list[Verdict],
    mv: list[bool],
    secs: tuple[float, float] | None,
) -> str:
    """One line of the table: agreement, FP, FN and cases/s (when timed alone) for score-eval, then math-verify."""
    expected = [cases[i]["expected"] for i in idx]
    cells = []
    for k, labels in enumerate(([ours_v[i].correct for i in idx], [mv[i] for i in idx])):
        agree, fp, fn = agreement(labels, expected)
        rate = f"{len(idx) / secs[k]:>8.0f}" if secs else f"{'-':>8}"
        cells.append(f"{agree:>6}/{len(idx):<4}{fp:>4}{fn:>4}{rate}")
    return f"  {name:<24}" + "   ".join(cells)


def shorten(text: str, keep: int = 400) -> str:
    """The JSON form of a string (escapes visible), its middle cut when long."""
    if len(text) <= keep:
        return json.dumps(text, ensure_ascii=False)
    head, tail = (json.dumps(part, ensure_ascii=False) for part in (text[:150], text[-200:]))
    return f"{head} ... {tail} ({len(text)} chars)"


def disagreement_kind(verdict: Verdict) -> str:
    if verdict.correct:
        return "false positive"
    return "no answer extracted" if verdict.extracted is None else "wrong equivalence"


def list_disagreements(cases: list[dict], ours_v: list[Verdict], mv: list[bool]) -> None:
    wrong = [i for i, c in enumerate(cases) if public.distinct(c) and ours_v[i].correct != c["expected"]]
    kinds = ("no answer extracted", "wrong equivalence", "false positive")
    print(f"\ndisagreements of score-eval with the label: {len(wrong)} distinct cases")
    for kind in kinds:
        of_kind = [i for i in wrong if disagreement_kind(ours_v[i]) == kind]
        print(f"\n== {kind}: {len(of_kind)} ({sum(public.sound(cases[i]) for i in of_kind)} with a sound label)")
        for i in of_kind:
            c, src = cases[i], cases[i]["source"]
            print(
                f"\n[{kind}] {c['id']}  {src['repo']} {src['path']}:{src['line']}  "
                f"expected {'right' if c['expected'] else 'wrong'}; math-verify says {'right' if mv[i] else 'wrong'}"
            )
            print(f"    gold:      {shorten(c['gold'])}   (upstream {shorten(c['gold_upstream'], 120)})")
            print(f"    response:  {shorten(c['response'])}")
            detail = f"   ({ours_v[i].detail})" if ours_v[i].detail else ""
            print(f"    extracted: {shorten(ours_v[i].extracted) if ours_v[i].extracted is not None else None}{detail}")
            for field in ("note", "unsound_for_math"):
                if field in c:
                    print(f"    {field}: {c[field]}")


def public_section(processes: int, show_disagreements: bool) -> None:
    cases = [c for c in public.load() if public.in_suite(c)]
    ours_v: list[Verdict] = [Verdict(None, False)] * len(cases)
    mv = [False] * len(cases)
    seconds: dict[str, tuple[float, float]] = {}
    for suite in public.SUITES:
        idx = [i for i, c in enumerate(cases) if c["suite"] == suite]
        verdicts, ours_s = ours_verdicts([(cases[i]["response"], cases[i]["gold"], None) for i in idx], processes)
        labels, mv_s = run_math_verify([(cases[i]["response"], cases[i]["gold"]) for i in idx], 1)
        for i, v, m in zip(idx, verdicts, labels):
            ours_v[i], mv[i] = v, m
        seconds[suite] = (ours_s, mv_s)
    total_s = tuple(sum(t[k] for t in seconds.values()) for k in (0, 1))
    print(f"\npublic graders' labelled cases ({public.PATH.name}), both graders on the same responses and golds")
    print("  FP: graded right where the label says wrong; FN: graded wrong where it says right; /s: cases per second")
    print(f"  (score-eval on {processes} worker processes, math-verify as shipped on one)")
    head = f"{'agree':>11}{'FP':>4}{'FN':>4}{'/s':>8}"
    print(f"  {'':<24}{'score-eval':^27}   {'math-verify 0.9.0':^27}")
    print(f"  {'suite':<24}{head}   {head}")
    for suite in public.SUITES:
        idx = [i for i, c in enumerate(cases) if c["suite"] == suite]
        print(public_row(suite, idx, cases, ours_v, mv, seconds[suite]))
    for suite in public.SUITES:
        idx = [i for i, c in enumerate(cases) if c["suite"] == suite and public.sound(c)]
        print(public_row(f"{suite}, sound", idx, cases, ours_v, mv, None))
    everything = [i for i, c in enumerate(cases) if public.distinct(c)]
    print(public_row("total, distinct cases", everything, cases, ours_v, mv, total_s))
    sound = [i for i in everything if public.sound(cases[i])]
    print(public_row("total, sound labels", sound, cases, ours_v, mv, total_s))
    print("  (the totals' /s is over every case graded above, the suites together)")
    if show_disagreements:
        list_disagreements(cases, ours_v, mv)


def reference_section(processes: int) -> None:
    files = [MATH_DATA / f"{split}.jsonl" for split in ("train", "test")]
    if not all(f.exists() for f in files):
        print(f"\nreference solutions: skipped, {MATH_DATA}/train.jsonl or test.jsonl is absent")
        return
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    verdicts, ours_s = ours_verdicts([(r["solution"], r["answer"], r["problem"]) for r in records], processes)
    mv, mv_s = run_math_verify([(r["solution"], r["answer"]) for r in records], processes)
    n = len(records)
    failed = [r["unique_id"] for r, v in zip(records, verdicts) if not v.correct]
    print(f"\nreference solutions: the {n} MATH train+test solutions, each graded against its own answer")
    print(f"  score-eval:  {n - len(failed)}/{n} correct in {ours_s:.1f} s; not correct: {', '.join(failed) or 'none'}")
    print(f"  math-verify: {sum(mv)}/{n} correct in {mv_s:.1f} s (pool of {processes} processes)")


def cutoff_cases(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(response, gold): the first `n` MATH test solutions cut at a random word before their last box.

    A response cut off by the token limit before it concludes states nothing, so every verdict
    "correct" here is a grader reading an intermediate value as the answer (or an earlier box of an
    alternative solution, which some reference solutions have: those count for both graders alike).
    """
    rng = random.Random(seed)
    cases = []
    for line in TEST.read_text().splitlines()[:n]:
        record = json.loads(line)
        boxes = boxed_answers(record["solution"])
        words = record["solution"][: boxes[-1][0]].split(" ") if boxes else []
        if len(words) >= 4:
            cases.append((" ".join(words[: rng.randrange(1, len(words))]), record["answer"]))
    return cases


def cutoff_section(n: int, processes: int) -> None:
    cases = cutoff_cases(n)
    verdicts, _ = ours_verdicts([(r, g, None) for r, g in cases], processes)
    mv, _ = run_math_verify(cases, processes)
    read = sum(v.extracted is not None for v in verdicts)
    print(f"\ncut-off responses: {len(cases)} MATH test solutions cut at a random word before their final box")
    print(f"  score-eval:  graded right {sum(v.correct for v in verdicts)} (an answer read in {read})")
    print(f"  math-verify: graded right {sum(mv)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="responses for the throughput run")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for both graders' pools")
    parser.add_argument(
        "--list-disagreements",
        action="store_true",
        help="print every public case where score-eval disagrees with the label, grouped by kind",
    )
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
    public_section(args.processes, args.list_disagreements)
    reference_section(args.processes)

    if not TEST.exists():
        print(f"cut-off responses and throughput: skipped, {TEST} is absent")
        return
    cutoff_section(2000, args.processes)
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
