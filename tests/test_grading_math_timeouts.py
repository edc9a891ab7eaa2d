"""A hostile answer costs one time limit, off the main thread too, and is graded wrong with detail "timeout"."""

from __future__ import annotations

import threading

from harness.data import Problem
from harness.grading.math import MathGrader

# 9^(9^(9^9)) has about 10^(3.7 * 10^8) digits: comparing it with anything makes sympy compute it,
# which no machine finishes (measured: still running after 20 s in a worker with no limit).
HOSTILE = r"\boxed{9^{9^{9^{9}}}}"
LIMIT = 2.0


def test_a_hostile_expression_times_out_inside_the_limit_from_a_background_thread():
    items = [
        (HOSTILE, Problem("hostile", "3", {})),
        (r"\boxed{\sqrt{27}}", Problem("radical", r"3\sqrt{3}", {})),
        (r"\boxed{(x+1)^2}", Problem("polynomial", "x^2+2x+1", {})),
    ]
    with MathGrader(processes=2, timeout=LIMIT) as grader:
        grader.grade(items[1:])  # start the workers: the limit is on grading, not on start-up
        result: dict = {}

        def grade_in_background() -> None:  # as the run does while the next turn generates
            result["verdicts"] = grader.grade(items)

        thread = threading.Thread(target=grade_in_background)
        thread.start()
        thread.join(timeout=120)
        timeouts = grader.pool().timeouts
    # An unbounded call would never return. How soon it returns depends on the machine's load: the
    # limit counts the worker's CPU seconds, and workers run at idle priority (2 s on an idle machine;
    # 11 s measured while another test suite ran beside this one).
    assert not thread.is_alive()
    hostile, radical, polynomial = result["verdicts"]
    assert (hostile.extracted, hostile.correct, hostile.detail) == ("9^{9^{9^{9}}}", False, "timeout")
    assert radical.correct and polynomial.correct and radical.detail is None
    assert timeouts == 1  # killed at its limit, once
