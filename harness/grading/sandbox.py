"""Run untrusted programs against trusted tests: one fresh process tree per program, many in parallel.

Each program gets a judge process (started through `unshare` into new pid, network, mount and IPC
namespaces where the platform permits) which starts a worker for the program; see sandbox_child.py
for the split and why it makes verdicts unforgeable. This module is the harness side: it probes
once what isolation the machine allows, gives every concurrent program a uid of its own (when the
harness runs as root), enforces the wall-clock limit from outside, and cleans up afterwards.
Processes are started with posix spawn/vfork + exec of a small interpreter (`python -I -S`), never
as forks of the (large, threaded) harness.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
GiB, MiB = 1 << 30, 1 << 20

# The environment a program sees: nothing inherited (no tokens, keys or proxies).
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
             "PYTHONHASHSEED": "0", "HOME": "/nonexistent", "TMPDIR": "/nonexistent"}

UNSHARE_FLAGS = ["--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private",
                 "--net", "--ipc", "--uts"]


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Time limits are generous on purpose: a loaded 2-core machine must not turn
    a correct program into a failure, and a runaway costs at most `cpu_s` of one core."""

    cpu_s: float = field(default=10.0, metadata={"help": "CPU seconds of the program (RLIMIT_CPU)"})
    wall_s: float = field(default=30.0, metadata={"help": "wall-clock seconds for load + all tests"})
    memory_bytes: int = field(default=4 * GiB, metadata={"help": "address space of the program (RLIMIT_AS)"})
    processes: int = field(default=64, metadata={"help": "processes the program's uid may hold (RLIMIT_NPROC)"})
    file_bytes: int = field(default=64 * MiB, metadata={"help": "largest file the program may write"})
    disk_bytes: int = field(default=128 * MiB, metadata={"help": "size of the working directory's tmpfs"})
    output_bytes: int = field(default=64 * 1024, metadata={"help": "captured stdout+stderr kept"})
    message_bytes: int = field(default=64 * MiB, metadata={"help": "largest value a program may return"})
    open_files: int = field(default=256, metadata={"help": "open file descriptors (RLIMIT_NOFILE)"})


@dataclass(frozen=True)
class Job:
    """A program and the trusted code that judges it.

    `prelude` runs in the judge first (imports, the dataset's helper functions, a reference
    solution); `tests` then runs with every name it uses that the program defines bound to the
    program's object, `entry_point` always so. The program passes when `tests` runs to its end.
    """

    program: str
    tests: str
    entry_point: str
    prelude: str = ""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str  # "passed", "failed: ...", "timed out", "memory", "crashed (...)"
    output: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Isolation:
    """What this machine lets the sandbox use; `describe()` says it in words for config.json and logs."""

    namespaces: bool  # pid + network + mount + ipc via unshare
    separate_uid: bool  # the program runs as a uid of its own (needs root)
    unshare: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {
            "pid_net_mount_namespaces": self.namespaces,
            "separate_uid": self.separate_uid,
            "rlimits": ["AS", "CPU", "NPROC" if self.separate_uid else None, "FSIZE", "NOFILE", "CORE"],
            "audit_hook": True,
            "wall_clock": "enforced by the judge and, as a backstop, by the harness",
        }


@lru_cache(maxsize=1)
def probe_isolation() -> Isolation:
    """Try `unshare` once; fall back quietly where containers or kernels forbid namespaces."""
    separate_uid = os.geteuid() == 0
    variants = [UNSHARE_FLAGS] if separate_uid else [["--user", "--map-root-user", *UNSHARE_FLAGS]]
    if os.environ.get("SCORE_EVAL_SANDBOX_NO_NAMESPACES"):
        variants = []
    for flags in variants:
        command = ("unshare", *flags, "--", sys.executable, "-I", "-S", "-c", "pass")
        try:
            ok = subprocess.run(command, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return Isolation(True, separate_uid, ("unshare", *flags, "--"))
    return Isolation(False, separate_uid)


class _UidPool:
    """Uids for concurrent programs: one each, so that `kill -1` by that uid kills exactly its processes
    and RLIMIT_NPROC counts exactly its processes. The base is random so that two harness processes
    on one machine do not share uids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = random.SystemRandom().randrange(1 << 20, 1 << 30, 1 << 12)
        self._free: list[int] = []
        self._next = 0

    def take(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._base + self._next

    def give(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)


_UIDS = _UidPool()


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Sandbox:
    """Thread-safe: `run` may be called from several threads at once (each call has its own pool)."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None) -> None:
        self.limits = limits or Limits()
        self.workers = workers or default_workers()
        self.isolation = probe_isolation()

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Outcomes in input order; never raises for anything a program does."""
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
            return list(pool.map(self.run_one, jobs))

    def run_one(self, job: Job) -> Outcome:
        uid = _UIDS.take() if self.isolation.separate_uid else None
        workdir = tempfile.mkdtemp(prefix="score-eval-")
        try:
            outcome, judged = self._judge(job, uid, workdir)
            if not judged and uid is not None and not self.isolation.namespaces:
                _sweep(uid)  # the judge sweeps after itself; this covers a judge that was killed
            return outcome
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if uid is not None:
                _UIDS.give(uid)

    def _judge(self, job: Job, uid: int | None, workdir: str) -> tuple[Outcome, bool]:
        """The outcome, and whether the judge itself delivered it (and so cleaned up after the program)."""
        limits = self.limits
        rlimits = [
            ["RLIMIT_AS", limits.memory_bytes, limits.memory_bytes],
            ["RLIMIT_CPU", int(limits.cpu_s + 0.999), int(limits.cpu_s + 0.999) + 1],
            ["RLIMIT_CORE", 0, 0],
            ["RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes],
            ["RLIMIT_NOFILE", limits.open_files, limits.open_files],
        ]
        if uid is not None:
            rlimits.append(["RLIMIT_NPROC", limits.processes, limits.processes])
        request = {
            **asdict(job),
            **{k: getattr(limits, k) for k in ("wall_s", "cpu_s", "disk_bytes", "output_bytes", "message_bytes")},
            "rlimits": rlimits,
            "uid": uid,
            "workdir": workdir,
            "env": CLEAN_ENV,
            "mount_namespace": self.isolation.namespaces,
            "interpreter": sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}),
        }
        command = [*self.isolation.unshare, sys.executable, "-I", "-S", "-B", str(CHILD), "judge"]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=CLEAN_ENV,
            cwd="/",
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(json.dumps(request).encode(), timeout=limits.wall_s + 15)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return Outcome(False, "timed out", "", limits.wall_s), False
        finally:
            _kill_group(proc)
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            verdict = json.loads(lines[-1])
            outcome = Outcome(verdict["passed"] is True, str(verdict["result"]), str(verdict.get("output", "")),
                              float(verdict.get("seconds", 0.0)))
            return outcome, True
        except (IndexError, ValueError, KeyError, TypeError):
            tail = " ".join(err.decode("utf-8", "replace").split())[-160:]
            return Outcome(False, f"failed: sandbox error (judge status {proc.returncode}) {tail}".strip()), False


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(uid: int) -> None:
    subprocess.run([sys.executable, "-I", "-S", "-B", str(CHILD), "reap", str(uid)], env=CLEAN_ENV, cwd="/",
                   capture_output=True, timeout=30)
