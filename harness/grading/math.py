"""The MATH grader: extract each response's final answer, decide it against the gold answer.

Extraction (math_extract) and the cheap decisions (no answer, equal after normalising, two plain
numbers) run in the calling process; they settle most responses and never start a process.
The rest need sympy, which can run without bound on hostile input, so they go to a persistent
pool of worker processes (workers.py) that kills any comparison over `timeout` seconds of CPU time;
such a comparison is graded wrong with detail "timeout", for the run's summary to count.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

from harness.grading import Verdict, register
from harness.grading.math_equiv import grade_math_answer, quick_decision
from harness.grading.math_extract import extract_answer, extract_answers, last_boxed
from harness.grading.workers import WorkerPool

__all__ = ["MathGrader", "extract_answer", "extract_answers", "grade_math_answer", "last_boxed"]

# CPU seconds for one comparison (workers.py): the slowest honest answer in MATH takes well under 1 s.
DEFAULT_TIMEOUT = 5.0
MEMORY_LIMIT = 4 << 30  # per worker; a runaway integer dies of MemoryError instead of swapping the machine
_PRELOAD = ("harness.grading.math_preload",)


def _problem_text(problem: Any) -> str | None:
    fields = getattr(problem, "fields", None)
    text = fields.get("problem") if isinstance(fields, dict) else None
    return text if isinstance(text, str) else None


class MathGrader:
    """Grades batches of (response, problem); thread-safe; call `close()` to stop its workers."""

    def __init__(
        self, processes: int | None = None, timeout: float = DEFAULT_TIMEOUT, fallback: str | None = None
    ) -> None:
        self.processes = processes
        self.timeout = timeout
        self.fallback = fallback
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()

    def grade(self, items: Sequence[tuple[str, Any]]) -> list[Verdict]:
        """Each response is right when any of its readings (extract_answers) equals the gold answer."""
        readings = [extract_answers(response, self.fallback) or [None] for response, _ in items]
        golds = [str(problem.answer) for _, problem in items]
        outcomes: dict[tuple[int, int], tuple[bool, str | None]] = {}
        pending = []
        for i, answers in enumerate(readings):
            for k, answer in enumerate(answers):
                quick = quick_decision(answer, golds[i])
                if quick is None:
                    pending.append((i, k))
                else:
                    outcomes[i, k] = (quick, None)
        if pending:
            jobs = [(readings[i][k], golds[i], _problem_text(items[i][1])) for i, k in pending]
            for key, outcome in zip(pending, self.pool().map(jobs)):
                detail = None if outcome.ok else "timeout" if outcome.status == "timeout" else f"error: {outcome.error}"
                outcomes[key] = (bool(outcome.value) if outcome.ok else False, detail)
        verdicts = []
        for i, answers in enumerate(readings):
            results = [outcomes[i, k] for k in range(len(answers))]
            hit = next((k for k, (correct, _) in enumerate(results) if correct), None)
            if hit is not None:
                verdicts.append(Verdict(answers[hit], True))
            else:
                verdicts.append(Verdict(answers[0], False, next((d for _, d in results if d), None)))
        return verdicts

    def pool(self) -> WorkerPool:
        with self._lock:
            if self._pool is None:
                self._pool = WorkerPool(
                    grade_math_answer,
                    processes=self.processes,
                    timeout=self.timeout,
                    preload=_PRELOAD,
                    memory_limit=MEMORY_LIMIT,
                )
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


register("math")(MathGrader)
# For models too small to state their answers reliably (tasks/arithmetic.yaml): the stated answer when
# there is one, else the last number in the response.
register("math-last-number")(functools.partial(MathGrader, fallback="last_number"))
