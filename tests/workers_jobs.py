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
    if kind == "spin_then_wait":  # `value` ms of CPU time, then 0.2 s asleep in short waits
        job("spin", value)
        for _ in range(10):
            time.sleep(0.02)
        return value
    if kind == "policy":
        return os.sched_getscheduler(0)
    if kind == "pid":
        return os.getpid()
    if kind == "allocate":  # more memory than the test's limit
        return len(bytearray(value))
    raise AssertionError(kind)


def _refuse(*args: object) -> None:
    raise OSError(22, "Invalid argument")  # gVisor's answer to any policy but SCHED_OTHER


class NoPolicyChange:
    """`job`, in a worker where setting a scheduling policy fails, as in a sandbox that forbids it.

    Pickled into the worker with the pool's `fn`, it replaces os.sched_setscheduler there as it is
    unpickled, before the worker starts serving; the test's own process is left alone."""

    def __init__(self) -> None:
        self.__qualname__ = "NoPolicyChange"  # the pool's messages name its fn so

    def __getstate__(self) -> dict[str, bool]:
        return {"refuse": True}

    def __setstate__(self, state: dict[str, bool]) -> None:
        os.sched_setscheduler = _refuse

    def __call__(self, kind: str, value: int = 0) -> int:
        return job(kind, value)
