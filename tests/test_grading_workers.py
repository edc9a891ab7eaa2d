"""The worker pool: every job gets an outcome, in order, and an overrunning job costs one limit."""

from __future__ import annotations

import threading
import time

import pytest

from harness.grading.workers import WorkerPool
from tests.workers_jobs import job


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(job, processes=2, timeout=1.0) as p:
        p.map([("double", 0)])  # start the workers before any test times anything
        yield p


def test_outcomes_come_back_in_input_order(pool):
    outcomes = pool.map([("double", n) for n in range(20)])
    assert [o.value for o in outcomes] == [2 * n for n in range(20)]
    assert all(o.ok for o in outcomes)


def test_a_job_that_overruns_is_killed_and_the_rest_still_finish(pool):
    timeouts = pool.timeouts
    start = time.perf_counter()
    outcomes = pool.map([("double", 1), ("sleep",), ("double", 2), ("double", 3)])
    elapsed = time.perf_counter() - start
    assert [o.status for o in outcomes] == ["ok", "timeout", "ok", "ok"]
    assert [outcomes[i].value for i in (0, 2, 3)] == [2, 4, 6]
    assert pool.timeouts == timeouts + 1
    # One 1 s limit plus a replacement worker's start, not an hour; generous for a loaded machine.
    assert elapsed < 10


def test_a_killed_worker_is_replaced(pool):
    restarts = pool.restarts
    pool.map([("sleep",)])
    assert pool.restarts == restarts + 1
    assert [o.value for o in pool.map([("double", n) for n in range(8)])] == [0, 2, 4, 6, 8, 10, 12, 14]


def test_an_exception_is_the_job_outcome_not_the_worker_end(pool):
    outcomes = pool.map([("raise", 7), ("double", 4)])
    assert outcomes[0].status == "error" and outcomes[0].error == "ValueError: bad value 7"
    assert outcomes[1].value == 8


def test_a_worker_that_dies_under_a_job_gives_an_error_outcome(pool):
    outcomes = pool.map([("exit",), ("double", 5)])
    assert outcomes[0].status == "error" and "exit code 3" in outcomes[0].error
    assert outcomes[1].value == 10


def test_calls_from_several_threads_each_get_their_own_results(pool):
    results: dict[int, list[int]] = {}

    def call(k: int) -> None:
        results[k] = [o.value for o in pool.map([("double", 100 * k + n) for n in range(10)])]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: [2 * (100 * k + n) for n in range(10)] for k in range(4)}


def test_a_memory_limit_turns_a_runaway_allocation_into_an_error():
    with WorkerPool(job, processes=1, timeout=10, memory_limit=1 << 30) as limited:
        outcomes = limited.map([("allocate", 2 << 30), ("double", 1)])
    assert outcomes[0].status == "error" and "MemoryError" in outcomes[0].error
    assert outcomes[1].value == 2


def test_close_stops_the_workers_and_a_later_call_starts_fresh_ones():
    p = WorkerPool(job, processes=1, timeout=5)
    first = p.map([("pid",)])[0].value
    p.close()
    assert p.map([("pid",)])[0].value != first
    p.close()


def test_a_pool_dropped_without_close_stops_its_workers():
    import gc

    p = WorkerPool(job, processes=1, timeout=5)
    p.map([("double", 1)])
    process = p._workers[0].process
    del p
    gc.collect()
    process.join(timeout=5)
    assert not process.is_alive()
