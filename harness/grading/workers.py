"""A pool of worker processes with a hard time limit per job: a job that overruns is killed.

Graders call code that can run without bound on hostile input (sympy on a tower of powers, a
model's program in an infinite loop). Signal-based timeouts only work on the main thread, and a
grader may run on a background thread while the next turn generates, so the only limit that always
holds is a process the parent kills. Each worker takes one job at a time over its own pipe; when
a job passes its deadline the parent kills that worker, records the job as timed out and starts
a replacement, while the other workers carry on.

Workers start through a forkserver that has imported `preload` once, so a replacement costs a
fork, not a fresh interpreter, and forking never copies the parent's threads (torch, generation).

Where /proc gives each process's CPU time (Linux), the limit counts the CPU seconds a job has used,
not the time since it was sent: grading runs beside generation, and a wall-clock limit made a verdict
depend on the machine's load (a comparison starved of CPU was killed and graded wrong; see
tests/test_grading_workers.py). A job is killed once it has used `timeout` CPU seconds, or once it is
not runnable (asleep or blocked, so not waiting for a CPU) and past `timeout` seconds since it was
sent, not counting the time it waited for a CPU (from /proc/<pid>/schedstat where there is one; a
job starved and then asleep for a moment was killed for the starved time). As a starved worker is
then never killed, workers run at idle priority (SCHED_IDLE, where the system allows it) and take
only CPU time nothing else wants; in five alternating one-turn MATH runs of the hf engine on 2 cores
that made no difference to the run's wall time that the machine's drift (16-23 s) did not hide. A
runaway job may then hold its worker long past `timeout` seconds while the machine is busy (one CPU
second took 93 s beside other work at load 2.5): there is no wall-clock limit on top.
Elsewhere the limit is the time since the job was sent and workers keep their priority.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.spawn
import os
import pickle
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What became of one job: `value` when ok, else `status` says why there is none."""

    status: str  # "ok", "timeout" or "error"
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# How often a job that is past `timeout` seconds since it was sent, but still runnable, is looked at.
_POLL = 0.1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_and_state(pid: int) -> tuple[float, str] | None:
    """A process's CPU seconds (user + system) and its state letter ("R" running or runnable, "S"
    asleep, "D" blocked, ...) from /proc/<pid>/stat; None where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) is in parentheses and may hold spaces; fields after it are plain.
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, fields[0].decode()


def _waited(pid: int) -> float:
    """Seconds a process's main thread has waited for a CPU, from /proc/<pid>/schedstat; 0 where
    there is no such file. Up to date whenever the thread is not runnable (a wait is added as it ends)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except OSError:
        return 0.0


def _serve(fn: Callable[..., Any], conn: Connection, memory_limit: int | None, idle: bool) -> None:
    if idle:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # a sandbox may refuse it (gVisor); the limit still counts CPU time, as before
            pass
    if memory_limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            conn.send(("ok", fn(*job)))
        except Exception as exc:  # noqa: BLE001 - a job's failure is its outcome, never the worker's end
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _stop_all(workers: list[_Worker]) -> None:
    """Ask each worker to exit, kill any that has not within a second, and empty the list."""
    for worker in workers:
        try:
            worker.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
    for worker in workers:
        worker.process.join(timeout=1)
        if worker.process.is_alive():
            worker.kill()
        else:
            worker.conn.close()
    workers.clear()


@contextmanager
def _child_start() -> Iterator[None]:
    """The conditions a worker (and the forkserver, started with the first one) is created under.

    SIGINT is blocked in this thread, and a blocked signal stays blocked across fork and exec: a
    terminal's Ctrl-C, sent to the whole process group, then reaches only the parent, which stops
    the workers itself, instead of printing a KeyboardInterrupt traceback from every worker. And
    `harness` is imported from where this process imported it: Python 3.11's forkserver runs
    `python -c`, which puts the current directory first on sys.path (and disregards the parent's
    sys.path), so a `harness/` folder there would otherwise shadow the installed package.
    """
    from multiprocessing import resource_tracker

    import harness

    # Started first, as starting it unblocks SIGINT in this thread again.
    resource_tracker.ensure_running()
    root = str(Path(harness.__file__).resolve().parent.parent)
    env = {"PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The name of worker processes whose function lives outside the main script (see _skip_main_script).
_WORKER_NAME = "score-eval-worker"


def _needs_main_script(fn: Callable[..., Any]) -> bool:
    """Whether the child needs the main script to unpickle `fn`: a function defined there, or one
    that refers to it (a functools.partial of such a function, whose own __module__ is functools)."""
    try:
        return b"__main__" in pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - starting the worker raises it, as before
        return True


def _skip_main_script() -> None:
    """Make multiprocessing leave the main script alone in processes named _WORKER_NAME.

    A child started by spawn or forkserver runs the parent's main script again (as __mp_main__), in
    case the function it is to run was defined there; a script that imports torch at its top cost
    every worker 2-5 s of CPU to start. A worker's function that lives in a module needs nothing from
    the script, and no multiprocessing option says so, so the preparation data sent to such a child
    is trimmed of the main script (`spawn.get_preparation_data`, in that module's __all__). Other
    processes are left as they were. Installed once per process.
    """
    prepare = multiprocessing.spawn.get_preparation_data
    if getattr(prepare, "skips_main_script", False):
        return

    @functools.wraps(prepare)
    def prepared(name: str) -> dict[str, Any]:
        data = prepare(name)
        if name == _WORKER_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    prepared.skips_main_script = True  # type: ignore[attr-defined]
    multiprocessing.spawn.get_preparation_data = prepared


class _Worker:
    def __init__(
        self, ctx: Any, fn: Callable[..., Any], memory_limit: int | None, idle: bool, name: str | None
    ) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(fn, child, memory_limit, idle), daemon=True, name=name)
        with _child_start():
            self.process.start()
        child.close()
        self.ready = False
        self.job: int | None = None
        self.sent = 0.0  # time.monotonic() when the job was sent
        self.cpu_at_send = 0.0  # the worker's CPU seconds then (with a CPU clock)
        self.waited_at_send = 0.0  # the seconds it had waited for a CPU then (with a CPU clock)

    def take(self, job: int, args: tuple[Any, ...], cpu_clock: bool) -> None:
        self.job, self.sent = job, time.monotonic()
        reading = _cpu_and_state(self.process.pid) if cpu_clock else None
        self.cpu_at_send = reading[0] if reading else 0.0
        self.waited_at_send = _waited(self.process.pid) if cpu_clock else 0.0
        self.conn.send(args)

    def overran(self, timeout: float, cpu_clock: bool) -> bool:
        """Whether the job in hand is over its limit (see the module docstring)."""
        if time.monotonic() - self.sent <= timeout:
            return False  # a single-threaded job cannot have used more CPU time than this either
        reading = _cpu_and_state(self.process.pid) if cpu_clock else None
        if reading is None:
            return True
        cpu, state = reading
        if cpu - self.cpu_at_send > timeout:
            return True
        # Asleep or blocked, and past the limit not counting its waits for a CPU; unless it has just
        # answered (read on the next round).
        waited = _waited(self.process.pid) - self.waited_at_send
        return state != "R" and time.monotonic() - self.sent - waited > timeout and not self.conn.poll()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class WorkerPool:
    """`processes` workers running `fn(*args)` for each args tuple, each job limited to `timeout` s.

    `fn` must be importable by name (a module-level function). The pool is persistent: workers
    start on first use and live until `close()`. `map` is thread-safe (calls take turns).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        processes: int | None = None,
        timeout: float = 5.0,
        preload: Sequence[str] = (),
        memory_limit: int | None = None,
    ) -> None:
        self.fn = fn
        self.processes = processes or max(1, min(os.cpu_count() or 1, 8))
        # Idle priority only where the limit counts CPU seconds: a starved worker is not killed.
        self.cpu_clock = _cpu_and_state(os.getpid()) is not None and hasattr(os, "SCHED_IDLE")
        # Workers whose function does not need the main script are started without it (asked once).
        self._worker_name = None
        if not _needs_main_script(fn):
            _skip_main_script()
            self._worker_name = _WORKER_NAME
        self.timeout = timeout
        self.memory_limit = memory_limit
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._ctx = multiprocessing.get_context(method)
        if method == "forkserver" and preload:
            self._ctx.set_forkserver_preload(list(preload))
        self._workers: list[_Worker] = []  # mutated in place, never rebound: the finalizer holds it
        # A pool dropped without close() (a grader nobody closed) still stops its workers.
        weakref.finalize(self, _stop_all, self._workers)
        self._lock = threading.Lock()
        self.timeouts = 0  # jobs killed for overrunning, over the pool's life
        self.restarts = 0  # workers replaced (after a timeout or a crash)

    def map(self, jobs: Sequence[tuple[Any, ...]]) -> list[Outcome]:
        """Run every job; outcomes come back in input order."""
        with self._lock:
            try:
                return self._map(jobs)
            except BaseException:
                # Workers may hold this call's jobs, whose answers the next call would take for its own.
                for worker in self._workers:
                    if worker.job is not None:
                        worker.process.kill()
                _stop_all(self._workers)
                raise

    def _map(self, jobs: Sequence[tuple[Any, ...]]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(jobs)
        if not jobs:
            return []
        while len(self._workers) < min(self.processes, len(jobs)):
            self._workers.append(self._start())
        queue = deque(range(len(jobs)))
        busy = 0
        while queue or busy:
            for worker in self._workers:
                if worker.ready and worker.job is None and queue:
                    job = queue.popleft()
                    worker.take(job, jobs[job], self.cpu_clock)
                    busy += 1
            ready = wait(
                [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers],
                timeout=self._next_check(),
            )
            for i, worker in enumerate(list(self._workers)):
                status, payload = self._receive(worker, ready)
                if status == "ready":
                    worker.ready = True
                elif status in ("ok", "error"):
                    outcomes[worker.job] = (
                        Outcome(status, payload) if status == "ok" else Outcome(status, error=payload)
                    )
                    worker.job = None
                    busy -= 1
                elif status == "died" or (worker.job is not None and worker.overran(self.timeout, self.cpu_clock)):
                    if not worker.ready:
                        worker.process.join(1)  # its exit code is known once it is joined
                        name = getattr(self.fn, "__qualname__", repr(self.fn))  # a partial has none
                        raise RuntimeError(
                            f"a worker for {name} died while starting (exit code {worker.process.exitcode}); "
                            "its error is printed above: the function must be importable by name in a fresh process"
                        )
                    worker.kill()
                    if worker.job is not None:
                        timed_out = status != "died"
                        outcomes[worker.job] = (
                            Outcome("timeout")
                            if timed_out
                            else Outcome("error", error=f"worker died (exit code {worker.process.exitcode})")
                        )
                        self.timeouts += timed_out
                        busy -= 1
                    self.restarts += 1
                    self._workers[i] = self._start()
        return [o if o is not None else Outcome("error", error="lost") for o in outcomes]

    def _next_check(self) -> float:
        """Seconds until a job in hand could first be over its limit; soon (_POLL) where one is past
        `timeout` seconds since it was sent but was runnable, so not yet over it."""
        sent = [w.sent for w in self._workers if w.job is not None]
        if not sent:
            return self.timeout
        return max(_POLL if self.cpu_clock else 0.0, min(sent) + self.timeout - time.monotonic())

    @staticmethod
    def _receive(worker: _Worker, ready: list[Any]) -> tuple[str | None, Any]:
        """The worker's message if it sent one, ("died", None) if it is gone, else (None, None)."""
        if worker.conn in ready:
            try:
                return worker.conn.recv()
            except (EOFError, OSError):
                return "died", None
        if worker.process.sentinel in ready:
            return "died", None
        return None, None

    def _start(self) -> _Worker:
        return _Worker(self._ctx, self.fn, self.memory_limit, idle=self.cpu_clock, name=self._worker_name)

    def close(self) -> None:
        """Stop every worker; the pool starts fresh ones if it is used again."""
        with self._lock:
            _stop_all(self._workers)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
