"""The judge: runs the dataset's trusted tests against a program that lives in another process, and
alone writes the verdict.

Started as `python -I -S sandbox_judge.py judge` by harness/grading/sandbox.py (inside `unshare`'s
namespaces where the machine permits); it serves one job at a time for as long as the harness keeps
its pipe open. It imports only the standard library and its sibling files (never the harness).

Why two processes: a test is an honest judge only if the code under test cannot touch it. The program
runs in a worker (sandbox_worker.py), a fresh process per program, forked from a clean interpreter
that never sees any tests, with its own uid, rlimits, root and audit hook, that only answers calls
with values encoded as plain data. The judge runs the
tests against proxies of the program's functions and rebuilds every returned value with the
standard library's own types (sandbox_protocol.py), so an object that claims to equal anything never
reaches an `==`; names the tests take from the builtins or the standard library are never the
program's. The verdict goes to a pipe the worker does not hold and cannot open (other uid; the judge
is non-dumpable and, in a pid namespace, pid 1), so exit statuses, prints, signals and crashes of the
program can only ever make it fail.

Per program the judge also: gives it a fresh IPC namespace (or removes its SysV IPC objects), meters
its CPU and memory over all of its processes (sandbox_usage.py), counts the time spent decoding its
replies against its budget, runs the tests in a runner forked for it and killed at the job's deadline
(so no value can make the tests' own work stall the judge), and kills everything it started before
the next job begins.
"""

from __future__ import annotations

import builtins
import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # last: a sibling math.py must not hide the stdlib
from sandbox_protocol import Decoder, Output, Timeout, dumps, encode, loads, parse_reply, recv, recv_bytes, send  # noqa: E402
from sandbox_usage import Meter, make_group  # noqa: E402

sys.path.pop()

WORKER_FILES = ("sandbox_worker.py", "sandbox_protocol.py")


class ProgramFailed(BaseException):
    """The program could not answer: it exited, crashed, ran out of time or broke the protocol.

    A BaseException, so that a test's `except Exception` cannot swallow it; and the link stays
    failed, so no later call can succeed either.
    """


class Remote:
    """A function or object that lives in the worker. Compares equal only to itself; has no truth value."""

    __slots__ = ("_ref", "_worker")

    def __init__(self, worker_, ref_):
        object.__setattr__(self, "_worker", worker_)
        object.__setattr__(self, "_ref", ref_)

    def __call__(self, *args, **kwargs):
        return self._worker.op("call", [self, list(args), kwargs])

    def __getattr__(self, name):
        return self._worker.op("getattr", [self, name])

    def __setattr__(self, name, value):
        self._worker.op("setattr", [self, name, value])

    def __getitem__(self, key):
        return self._worker.op("getitem", [self, key])

    def __iter__(self):
        return iter(self._worker.op("iter", [self]))

    def __len__(self):
        return self._worker.op("len", [self])

    def __repr__(self):
        return self._worker.op("repr", [self])

    def __str__(self):
        return self._worker.op("str", [self])

    def __eq__(self, other):
        return type(other) is Remote and other._worker is self._worker and other._ref == self._ref

    def __hash__(self):
        return hash((id(self._worker), self._ref))

    def __bool__(self):
        # As in Python, an object's truth is its own (`assert f(x)` with a re.Match); unlike `==`, truth
        # cannot make one object pass both `assert f(x)` and `assert not f(y)`.
        return self._worker.op("bool", [self]) is True


class WorkerLink:
    """The judge's side of the worker: requests out, plain values (or Remote proxies) back.

    The program's budget is spent while the judge waits for it and while the judge decodes what it
    sent (a reply built to be slow to decode is the program's time); the judge's own work, such as
    HumanEval+ running the reference solution on every input, is not. While waiting, the judge looks
    at the program's summed CPU and memory every 0.1 s and ends it at either cap."""

    failure: str | None = None

    def __init__(self, spawner: Spawner, pid: int, req: int, resp: int, output: Output, job: dict, meter: Meter):
        self.spawner, self.pid, self.req, self.resp, self.output, self.meter = spawner, pid, req, resp, output, meter
        self.budget = float(job["wall_s"])
        self.cap, self.cpu_limit = job["message_bytes"], job["cpu_s"]
        self.status: int | None = None
        self.cpu_of_worker = 0.0

    def _out(self, x):
        if type(x) is Remote and x._worker is self:
            return {"r": x._ref}
        raise TypeError(f"cannot pass a {type(x).__name__} to the program")

    def _ref(self, n):
        return Remote(self, n)

    def fail(self, reason: str) -> ProgramFailed:
        self.failure = self.failure or reason
        return ProgramFailed(self.failure)

    def over_cap(self) -> str | None:
        """The reason to end the program now, if its processes together passed a cap."""
        if self.meter.cpu_seconds() >= self.cpu_limit:
            return "timed out"
        if self.meter.memory_exceeded():
            return "memory"
        return None

    def _watch(self) -> None:
        reason = self.over_cap()
        if reason:
            raise self.fail(reason)

    def exchange(self, message, decode: bool = False):
        """Send `message`, return the reply (its "ok" value decoded when `decode`), all on the budget."""
        if self.failure:
            raise ProgramFailed(self.failure)
        import time

        start = time.monotonic()
        self.deadline = start + self.budget
        try:
            send(self.req, message)
            data = recv_bytes(self.resp, self.deadline, self.cap, self.output, self._watch)
            reply = parse_reply(data, self.cap)
            del data
            if decode and isinstance(reply, dict) and "ok" in reply:
                reply["ok"] = Decoder(self._ref, self.deadline)(reply["ok"])
            return reply
        except (BrokenPipeError, EOFError):
            raise self.fail(self.death()) from None
        except Timeout:
            raise self.fail("timed out") from None
        except MemoryError:
            raise self.fail("memory") from None
        except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError) as exc:
            raise self.fail(f"failed: bad reply from the program ({str(exc)[:100] or type(exc).__name__})") from None
        finally:
            self.budget -= time.monotonic() - start

    def op(self, name: str, args: list):
        reply = self.exchange([name, encode(args, self._out)], decode=True)
        if not isinstance(reply, dict) or not ({"ok", "error"} & reply.keys()):
            raise self.fail("failed: bad reply from the program")
        if "error" in reply:
            kind, message = (list(reply["error"]) + ["", ""])[:2] if isinstance(reply["error"], list) else ("", "")
            if kind == "MemoryError":
                raise self.fail("memory")
            cls = getattr(builtins, str(kind), None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)) or issubclass(cls, AssertionError):
                # The program may not raise the judge's AssertionError (or anything a test might expect).
                raise RuntimeError(f"{kind}: {message}")
            raise cls(str(message))
        return reply["ok"]

    def wait(self, timeout: float) -> int | None:
        """The worker's exit status (negative: killed by that signal), or None if still running."""
        if self.status is None:
            ended = self.spawner.ended(self.pid, timeout)
            if ended is not None:
                self.status, self.cpu_of_worker = ended
        return self.status

    def death(self) -> str:
        """Why the worker is gone. "timed out" only when it was killed at a CPU cap (its own RLIMIT_CPU,
        or its processes' sum); a program that kills itself has crashed, whatever ran before it."""
        import signal
        import time

        status = self.wait(max(0.1, min(2.0, self.deadline - time.monotonic())))
        if status is None:
            return "failed: the program closed its channel"
        if status in (-signal.SIGXCPU, -signal.SIGKILL) and (
            self.cpu_of_worker >= self.cpu_limit - 0.5 or self.meter.cpu_seconds() >= self.cpu_limit
        ):
            return "timed out"
        if status == -signal.SIGKILL and self.meter.memory_exceeded():
            return "memory"
        if status < 0:
            return f"crashed (signal {-status}: {signal.Signals(-status).name})"
        return f"failed: the program exited with status {status}"


class Spawner:
    """The judge's side of the spawner (sandbox_worker.spawner): a clean interpreter, started once,
    that forks each program's worker. It lives in the program cgroup (`adopt` puts it there), so that
    a worker is born there: moving a process between cgroups costs milliseconds of waiting, per
    hierarchy. Where a program shares its uid (no root) it could kill the spawner: then the next
    spawn starts another."""

    def __init__(self, code: str, env: dict, root: str | None, adopt):
        self.code, self.env, self.root, self.adopt = code, env, root, adopt
        self.fresh_ipc = False  # whether the last worker got an IPC namespace of its own
        self.start()

    def start(self) -> None:
        import socket

        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        devnull = os.open(os.devnull, os.O_RDWR)
        self.pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", "-B", self.code, str(theirs.fileno()), self.root or ""],
            self.env,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)],
        )
        theirs.close()
        os.close(devnull)
        try:  # the OOM killer of the program's cgroup must take the program, never the spawner
            with open(f"/proc/{self.pid}/oom_score_adj", "w") as fh:
                fh.write("-1000")
        except OSError:
            pass
        self.adopt(self.pid)

    def spawn(self, config: dict) -> tuple[int, int, int, int]:
        """A new worker: its pid and the judge's ends of its request, reply and output pipes."""
        try:
            return self._spawn(config)
        except (OSError, ValueError, KeyError):
            self.close()
            self.start()
            return self._spawn(config)

    def _spawn(self, config: dict) -> tuple[int, int, int, int]:
        import socket

        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            socket.send_fds(self.channel, [dumps(config).encode()], [req_r, resp_w, out_w])
            reply = loads(self.channel.recv(1 << 16))
            pid, self.fresh_ipc = reply["pid"], reply["fresh_ipc"] is True
        except BaseException:
            for fd in (req_w, resp_r, out_r):
                os.close(fd)
            raise
        finally:
            for fd in (req_r, resp_w, out_w):
                os.close(fd)
        return pid, req_w, resp_r, out_r

    def ended(self, pid: int, timeout: float) -> tuple[int, float] | None:
        """(exit status, CPU seconds) of worker `pid` once it has ended, or None after `timeout`."""
        import select

        if not select.select([self.channel], [], [], timeout)[0]:
            return None
        message = self.channel.recv(1 << 16)
        if not message:
            return None  # the spawner is gone (the next spawn starts another)
        reply = loads(message)
        if reply.get("pid") != pid:
            raise OSError(f"the spawner answered for {reply.get('pid')}, not {pid}")
        return int(reply["status"]), float(reply["cpu"])

    def close(self) -> None:
        self.channel.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped by the sweep after it died
            pass


_LIBC = []


def _libc():
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _prctl(option: int, value: int) -> bool:
    return _libc().prctl(option, value, 0, 0, 0) == 0


_PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 4, 36, 38
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 32, 4096, 16384
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    import ctypes

    if (
        _libc().mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _bind(source: str, target: str, read_only: bool) -> None:
    _mount(source, target, None, _MS_BIND | _MS_REC)
    if read_only:
        _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def minimal_root(root: str, keep: list[str], hide: list[str]) -> None:
    """Build the program's whole filesystem at `root` (inside a private mount namespace):

    read-only binds of the system directories, the interpreter and this script's directory; empty
    read-only tmpfs over `hide` (site-packages, which holds datasets such as HumanEval's); a few
    device nodes; /proc of the pid namespace; and /program, a size-capped tmpfs owned by the program's
    uid, the only place it can write (/tmp points there). Nothing else of the host is visible: not the
    repository, not the data files, not /root.
    """
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=1m")
    bound: list[str] = []
    for directory in (*SYSTEM_DIRS, *sorted({os.path.realpath(k) for k in keep})):
        target = root + directory
        if os.path.islink(directory):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(directory), target)
        elif os.path.isdir(directory) and not any(_under(directory, b) for b in bound):
            os.makedirs(target, exist_ok=True)
            _bind(directory, target, read_only=True)
            bound.append(directory)
    for directory in hide:
        if os.path.isdir(root + directory):
            _mount("tmpfs", root + directory, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4k")
    for path in SYSTEM_FILES:
        if os.path.exists(path):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            open(root + path, "w").close()
            _bind(path, root + path, read_only=not path.startswith("/dev/"))
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV)
    os.makedirs(root + "/program")
    # /tmp points at the program's directory, unless a kept directory lies under /tmp (a checkout
    # in /tmp): then /tmp is that read-only tree, and TMPDIR (set to the program's directory) is
    # where temporary files go.
    if not os.path.lexists(root + "/tmp"):
        os.symlink("/program", root + "/tmp")
    # POSIX shared memory and semaphores (multiprocessing's locks) live in the program's directory too.
    os.makedirs(root + "/dev", exist_ok=True)
    os.symlink("/program", root + "/dev/shm")


def fresh_workdir(path: str, uid: int | None, disk_bytes: int) -> None:
    """A new, empty, size-capped tmpfs for one program; unmounting it afterwards discards everything."""
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=700,size={disk_bytes}{owner}")


def _umount(path: str) -> None:
    _MNT_DETACH = 2
    _libc().umount2(path.encode(), _MNT_DETACH)


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def kill_everything(uid: int | None, spare: int | None = None) -> None:
    """Kill every process the program started, wherever it went (other group, other session).

    With a uid of its own, a helper of that uid signals -1: all processes of that uid. Being of that
    uid, the helper can be stopped by them (SIGSTOP), so it gets HELPER_S; past that the judge kills
    it and, as root, each process of the uid it finds. Without a uid of its own, the judge is a child
    subreaper (or pid 1), so orphans of the program are re-parented to it and swept here (all of its
    children but `spare`, the spawner; the worker itself is dead by now).
    """

    if uid is not None:
        if not _ended_in_time(_kill_helper(uid), HELPER_S):
            _kill_each_process_of(uid)
    for _ in range(1000):
        children = [child for child in _children() if child != spare]
        if not children:
            break
        _sigkill(children)
        _reap()
    _reap()


def _sigkill(pids: list[int]) -> None:
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


HELPER_S = 1.0  # how long the kill helper may take before the judge kills by itself


def _kill_helper(uid: int) -> int:
    """A child that becomes `uid` and signals -1 until no process of the uid is left."""
    import signal

    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(10_000):  # a fork bomb may add processes while we kill; NPROC bounds it
                try:
                    os.kill(-1, signal.SIGKILL)  # only processes of this uid: nothing else is ours to kill
                except ProcessLookupError:
                    break
                if not _processes_of(uid):
                    break
        finally:
            os._exit(0)
    return pid


def _ended_in_time(pid: int, timeout: float) -> bool:
    """Reap child `pid`; if it has not ended within `timeout` (stopped, or slow), kill it first."""
    import signal
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def _kill_each_process_of(uid: int) -> None:
    """As root: SIGKILL every live process of `uid`, again until none is left (NPROC bounds a fork bomb)."""
    for _ in range(1000):
        found = _processes_of(uid)
        if not found:
            return
        _sigkill(found)


def _processes_of(uid: int) -> list[int]:
    """Live processes (not zombies) whose real uid is `uid`, other than this one."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                with open(f"/proc/{entry}/status") as fh:
                    status = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
            except (OSError, ValueError):
                continue
            if status.get("Uid", "").split()[:1] == [str(uid)] and not status.get("State", "").strip().startswith(
                ("Z", "X")
            ):
                found.append(int(entry))
    return found


def _children() -> list[int]:
    """Pids whose parent is this process (orphans land here: the judge is pid 1 or a subreaper)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
                found.append(int(entry))
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def valid_text(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate (`raise ValueError(chr(0xd800))`) becomes its escape
    `\\ud800`, so the verdict can be written as UTF-8 wherever it goes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _failure_line(exc: BaseException, tests: str) -> str:
    """`failed: <the first failing assertion or error>`, pointing at the test line that failed."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<tests>"]
    line = tests.splitlines()[frames[-1].lineno - 1].strip() if frames and frames[-1].lineno else ""
    message = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AssertionError) and not message:
        message = line or "AssertionError"
    elif line and isinstance(exc, AssertionError):
        message = f"{line} ({message})"
    text = " ".join(message.split())
    return "failed: " + (text if len(text) <= 200 else text[:197] + "...")


def judge() -> None:
    """Serve jobs from the harness until it closes the pipe: one framed message in, one verdict out.

    The judge lives across jobs (it runs only trusted code), which saves an interpreter start and
    the namespace setup per program; every program still gets a fresh worker process, a fresh
    working directory, a fresh IPC namespace, and a sweep of everything it started before the next
    job begins.
    """
    import resource
    import time

    requests, verdicts = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)  # the tests' own prints must not reach the verdict channel
    _prctl(_PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<judge>/{mem,fd} for same-uid processes
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # inherited: no setuid binary can raise the program's privileges
    if os.getpid() != 1:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    setup = recv(requests)
    # The judge's own limits: memory (decoding a reply is bounded by the message cap; see
    # sandbox_protocol.CONTAINER_BYTES) and no core dumps. Soft limits only: a worker sets its own.
    for name, soft in (("RLIMIT_AS", setup["memory_bytes"]), ("RLIMIT_CORE", 0)):
        limit = getattr(resource, name)
        resource.setrlimit(limit, (soft, resource.getrlimit(limit)[1]))
    uid, root = setup["uid"], None
    if setup["mount_namespace"]:
        root = setup["root"]
        minimal_root(root, setup["interpreter"], setup["hide"])
    worker_code = _compiled_copy(setup["root"])
    meter = Meter(make_group(setup["cgroup"]) if setup["cgroup"] else None, os.getpid())
    meter.spawner = spawner = Spawner(worker_code, setup["env"], root, meter.adopt)
    while True:
        try:
            job = recv(requests)
        except EOFError:
            spawner.close()
            if meter.group is not None:
                meter.group.remove()
            return
        start = time.monotonic()
        if root is not None:
            workdir = "/program"
            fresh_workdir(root + workdir, uid, job["disk_bytes"])
        else:
            workdir = job["workdir"]
            if uid is not None:
                os.chown(workdir, uid, uid)
        config = {"rlimits": job["rlimits"], "workdir": workdir, "uid": uid, "fresh_ipc": root is not None}
        output = Output(-1, job["output_bytes"])
        try:
            result = _judged(job, config, output, spawner, meter)
        except Exception as exc:  # noqa: BLE001 - a fault of the judge is reported, never a pass
            result = {"passed": False, "result": f"failed: sandbox error ({type(exc).__name__}: {exc})"}
        finally:
            kill_everything(uid, spawner.pid)
            output.drain()
            if not spawner.fresh_ipc and uid is not None:
                remove_ipc_objects(uid)
            if root is None and uid is not None:
                remove_files_of(uid)
        if root is not None:
            _umount(root + workdir)
        result["result"] = valid_text(result["result"])
        result["output"] = output.kept.decode("utf-8", "replace")
        result["seconds"] = round(time.monotonic() - start, 3)
        send(verdicts, result)


def remove_ipc_objects(uid: int) -> None:
    """Without an IPC namespace per program: remove the SysV IPC objects the program's uid owns or made."""
    libc = _libc()
    for kind, id_column in (("shm", "shmid"), ("sem", "semid"), ("msg", "msqid")):
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        header = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(header, line.split()))
            if str(uid) not in (row.get("uid"), row.get("cuid")):
                continue
            ident = int(row[id_column])  # IPC_RMID is command 0
            if kind == "sem":
                libc.semctl(ident, 0, 0, None)
            else:
                (libc.shmctl if kind == "shm" else libc.msgctl)(ident, 0, None)


SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")  # world-writable on most hosts


def remove_files_of(uid: int) -> None:
    """Without a mount namespace: remove what the program's uid (dead by now) left in the host's shared
    writable directories (a child process's /tmp or /dev/shm file for a later program to read). Only
    world-writable directories are searched, the only ones of other owners where the uid could write."""
    import shutil
    import stat

    pending = [d for d in SHARED_DIRS if os.path.isdir(d)]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_uid == uid:
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass
            elif stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH:
                pending.append(entry.path)


def _compiled_copy(directory: str) -> str:
    """The worker's files compiled once per judge into the program's root, so that a worker does not
    spend most of its start-up compiling them (bytecode caches are often disabled), and so that
    nothing of the repository has to be visible to the program."""
    import py_compile

    here = os.path.dirname(os.path.abspath(__file__))
    for name in WORKER_FILES:
        source = os.path.join(here, name)
        py_compile.compile(source, cfile=os.path.join(directory, name[:-3] + ".pyc"), doraise=True)
    return os.path.join(directory, "sandbox_worker.pyc")


def _judged(job: dict, config: dict, output: Output, spawner: Spawner, meter: Meter) -> dict:
    """The verdict on one program, its tests run by a runner forked from the judge, killed at the deadline.

    Why a process: the tests' own work on a returned value is C code no signal interrupts (`set()`
    of 70,000 ints that all hash alike, `int()` of `Decimal('1e1000000')`: minutes each). So the job
    ends at the program's wall clock plus the judge's share (`judge_s`), however its time was spent:
    "timed out" for that program only, and the judge goes on with the next. The runner is a fork of
    the judge (its uid, non-dumpable), so the program can no more reach it than the judge.
    """
    import signal
    import time

    meter.start(_rlimit(job, "RLIMIT_AS"), _rlimit(job, "RLIMIT_NPROC") or 1 << 20)
    pid, req_w, resp_r, out_r = spawner.spawn(config)
    output.fd = output.source = out_r
    results_r, results_w = os.pipe()
    deadline = time.monotonic() + job["wall_s"] + job["judge_s"]
    link = WorkerLink(spawner, pid, req_w, resp_r, output, job, meter)
    runner = os.fork()
    if runner == 0:
        os.close(results_r)
        _runner(results_w, job, link)
    for fd in (results_w, req_w, resp_r):
        os.close(fd)
    reported = False  # whether the runner took the worker's exit report off the spawner's channel
    try:
        result = recv(results_r, deadline, cap=8 * job["output_bytes"] + (1 << 20))
        output.kept[:0] = result.pop("kept").encode("latin-1")
        reported = result.pop("reported") is True
        return result
    except Timeout:
        return {"passed": False, "result": "timed out"}
    except (EOFError, ValueError, KeyError, AttributeError):
        return {"passed": False, "result": "failed: sandbox error (the test runner ended without a verdict)"}
    finally:
        os.close(results_r)
        os.kill(runner, signal.SIGKILL)
        os.waitpid(runner, 0)
        if not reported:
            _forget_worker(spawner, pid)


def _runner(results: int, job: dict, link: WorkerLink) -> None:
    """The forked runner: the tests against the worker; the verdict, and the output it read, to the judge."""
    code = 1
    try:
        result = _run_tests(job, link)
        kept = bytes(link.output.kept).decode("latin-1")
        send(results, {**result, "kept": kept, "reported": link.status is not None})
        code = 0
    finally:
        os._exit(code)


def _forget_worker(spawner: Spawner, pid: int) -> None:
    """After a runner was killed: end the worker, and take its exit report off the spawner's channel (or,
    where that fails, start a new spawner), so that the next spawn reads its own reply."""
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        spawner.ended(pid, 2.0)
    except OSError:
        spawner.close()
        spawner.start()


def _run_tests(job: dict, link: WorkerLink) -> dict:
    import signal

    pid, req_w, resp_r = link.pid, link.req, link.resp
    tests = job["tests"]
    try:
        loaded = link.exchange(job["program"])
        if not isinstance(loaded, dict) or loaded.get("loaded") is not True:
            error = loaded.get("error") if isinstance(loaded, dict) else None
            kind, message = (list(error) + ["", ""])[:2] if isinstance(error, list) else ("?", "")
            if kind == "MemoryError":
                return {"passed": False, "result": "memory"}
            text = " ".join(f"{kind}: {message}".split())[:180]
            return {"passed": False, "result": f"failed: the program did not load ({text})"}
        names = set(loaded.get("names", ()))
        if job["entry_point"] not in names:
            return {"passed": False, "result": f"failed: the program does not define {job['entry_point']}"}
        namespace: dict = {"__name__": "__judge__"}
        exec(compile(job["prelude"], "<prelude>", "exec"), namespace)  # noqa: S102 - the dataset's trusted code
        bind_program_names(namespace, _names(tests) & names, job["entry_point"], link)
        exec(compile(tests, "<tests>", "exec"), namespace)  # noqa: S102 - the dataset's trusted tests
        if link.failure:
            return {"passed": False, "result": link.failure}
        reason = link.over_cap()  # processes it left running may have passed a cap after its last answer
        if reason:
            return {"passed": False, "result": reason}
    except ProgramFailed as exc:
        return {"passed": False, "result": str(exc)}
    except Exception as exc:  # noqa: BLE001 - an assertion, or an error raised through the program
        return {"passed": False, "result": _failure_line(exc, tests)}
    finally:
        for fd in (req_w, resp_r):
            os.close(fd)
        if link.wait(0) is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended and the spawner reaped it; its status is on the way
            link.wait(5)
    return {"passed": True, "result": "passed"}


def bind_program_names(namespace: dict, used: set[str], entry_point: str, link: WorkerLink) -> None:
    """Give the tests the program's objects for the names they use: the entry point always, any other
    name only where neither the dataset's prelude, nor the builtins, nor the standard library has it.
    So a program's module-level `abs = lambda x: 0` or `import math as range` never reaches the tests;
    a standard-library module the tests use (`math.isclose`) is the judge's own import."""
    for name in sorted(used):
        if name == entry_point:
            namespace[name] = link.op("global", [name])
        elif name in namespace or hasattr(builtins, name):
            continue
        elif name in sys.stdlib_module_names:
            namespace[name] = __import__(name)
        else:
            namespace[name] = link.op("global", [name])


def _rlimit(job: dict, name: str) -> int | None:
    return next((soft for limit, soft, _ in job["rlimits"] if limit == name), None)


def _names(source: str) -> set[str]:
    import ast

    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}


def reap(uid: int) -> None:
    """Run by the harness after it had to kill a judge: sweep the processes of the program's uid."""
    kill_everything(uid)
    remove_ipc_objects(uid)
    remove_files_of(uid)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "judge":
        judge()
    elif role == "reap":
        reap(int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")
