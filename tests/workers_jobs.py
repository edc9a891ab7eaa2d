"""Jobs for the worker-pool tests; workers import them by name, so they live in a module."""

from __future__ import annotations

import os
import time


def job(kind: str, value: int = 0) -> int:
    if kind == "double":
        return 2 * value
    if kind == "sleep":  # a job that overruns any limit the tests set
        time.sleep(3600)
    if kind == "raise":
        raise ValueError(f"bad value {value}")
    if kind == "exit":  # the worker dies under the job
        os._exit(3)
    if kind == "spin":  # `value` ms of CPU time
        end = time.process_time() + value / 1000
        while time.process_time() < end:
            pass
        return value
    if kind == "policy":
        return os.sched_getscheduler(0)
    if kind == "pid":
        return os.getpid()
    if kind == "allocate":  # more memory than the test's limit
        return len(bytearray(value))
    raise AssertionError(kind)
