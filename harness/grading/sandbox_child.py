"""The two processes inside the sandbox: a judge that runs the trusted tests, a worker that runs the program.

Started as `python -I -S sandbox_child.py judge` by harness/grading/sandbox.py. It imports only the
standard library (never the harness), so nothing of the harness lives in a process the program can reach.

Why two processes: a test is an honest judge only if the code under test cannot touch it. The
program is loaded into the worker, which drops to an unprivileged uid of its own, sets rlimits and
an audit hook, then answers calls ("call entry point with these arguments") with values encoded as
plain data. The judge runs the dataset's test code against proxies of those functions and decodes
every returned value into builtins (int, str, list, ...), so an object that claims to equal anything
never reaches an `==`; and the verdict is written by the judge alone, to a pipe the worker does not
hold and cannot open (other uid, non-dumpable judge), so exit statuses, prints, signals and crashes
of the program can only ever make it fail.
"""

from __future__ import annotations

import builtins
import json
import os
import select
import signal
import struct
import sys
import threading
import time
import traceback

_HEADER = struct.Struct(">I")

# ---------------------------------------------------------------------------------------------
# Plain-data codec shared by judge and worker. JSON arrays are lists; every other container is a
# one-key object naming its type; {"r": n} is a reference to an object kept in the worker.


def encode(x, other):
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is list:
        return [encode(v, other) for v in x]
    if t is tuple:
        return {"t": [encode(v, other) for v in x]}
    if t is dict:
        return {"d": [[encode(k, other), encode(v, other)] for k, v in x.items()]}
    if t is set:
        return {"s": [encode(v, other) for v in x]}
    if t is frozenset:
        return {"f": [encode(v, other) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [x.real, x.imag]}
    return other(x)


def decode(x, ref):
    if isinstance(x, list):
        return [decode(v, ref) for v in x]
    if not isinstance(x, dict):
        return x
    ((tag, v),) = x.items()
    if tag == "t":
        return tuple(decode(e, ref) for e in v)
    if tag == "d":
        return {decode(k, ref): decode(e, ref) for k, e in v}
    if tag == "s":
        return {decode(e, ref) for e in v}
    if tag == "f":
        return frozenset(decode(e, ref) for e in v)
    if tag == "b":
        return bytes.fromhex(v)
    if tag == "c":
        return complex(*v)
    if tag == "r":
        return ref(v)
    raise ValueError(f"unknown tag {tag!r}")


def send(fd: int, message) -> None:
    data = json.dumps(message).encode()
    data = _HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


class Timeout(Exception):
    pass


def recv(fd: int, deadline: float | None = None, cap: int = 1 << 30):
    """One message; Timeout past `deadline`, EOFError when the writer is gone, ValueError when over `cap`."""

    def read_exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                    raise Timeout
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = _HEADER.unpack(read_exactly(_HEADER.size))
    if size > cap:
        raise ValueError(f"message of {size} bytes exceeds the cap of {cap}")
    return json.loads(read_exactly(size))


# ---------------------------------------------------------------------------------------------
# Worker: runs the untrusted program.

# Imported before dropping privileges when the interpreter's files are unreadable to the program's
# uid and no mount namespace can expose them (e.g. Python under /root, mode 700).
PREIMPORT = (
    "math cmath re collections collections.abc itertools functools heapq bisect string operator copy random "
    "fractions decimal statistics datetime hashlib array struct textwrap unicodedata numbers typing time"
).split()

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # event -> positions of path arguments that must stay inside the workdir
    "os.mkdir": (0,), "os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.symlink": (1,),
    "os.link": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,), "os.chdir": (), "os.chroot": (0,),
}
_DENIED_EVENTS = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "os.setuid", "os.setgid"}
_DENIED_IMPORTS = {"ctypes", "_ctypes", "cffi", "_posixshmem"}


def audit_hook(workdir: str):
    """A layer over the kernel's checks that turns the common escapes into readable errors.

    It cannot be a boundary on its own (C code and child processes bypass it), which is why it
    also refuses ctypes; the uid, the namespaces and the rlimits are the boundary.
    """
    root = os.path.realpath(workdir)
    parent = os.getppid()

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        full = os.path.realpath(os.path.join(root, os.fsdecode(path)))
        return full == root or full.startswith(root + os.sep) or full == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = bool(flags & _WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is denied ({path})")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory is denied")
        elif event in _DENIED_EVENTS:
            raise PermissionError(f"sandbox: {event} is denied")
        elif event == "import" and str(args[0]).split(".")[0] in _DENIED_IMPORTS:
            raise ImportError(f"sandbox: importing {args[0]} is denied")
        elif event in ("os.kill", "os.killpg") and (args[0] <= 0 or args[0] == parent):
            raise PermissionError(f"sandbox: {event}({args[0]}) is denied")

    return hook


def _describe(exc: BaseException) -> list:
    return [type(exc).__name__, str(exc)[:500]]


def worker(config: dict) -> None:
    import resource

    for name, soft, hard in config["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    workdir = config["workdir"]
    os.chdir(workdir)
    if config["preimport"]:
        for module in PREIMPORT:
            __import__(module)
    uid = config["uid"]
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("could not drop privileges")
    req, resp = config["fds"]
    sys.addaudithook(audit_hook(workdir))

    refs: list = []

    def keep(x):
        if isinstance(x, int):
            return int.__index__(x)
        if isinstance(x, float):
            return float.__float__(x)
        if isinstance(x, str):
            return str.__str__(x)
        for base in (list, tuple, set, frozenset):
            if isinstance(x, base):
                return encode(base(base.__iter__(x)), keep)
        if isinstance(x, dict):
            return {"d": [[encode(k, keep), encode(v, keep)] for k, v in dict.items(x)]}
        refs.append(x)
        return {"r": len(refs) - 1}

    def ref(n):
        return refs[n]

    namespace = {"__name__": "solution", "__builtins__": builtins}
    program = recv(req)
    try:
        exec(compile(program, "<program>", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - any failure of the program is its verdict
        send(resp, {"loaded": False, "error": _describe(exc)})
        return
    send(resp, {"loaded": True, "names": sorted(k for k in namespace if not k.startswith("__"))})
    ops = {
        "global": lambda name: namespace[name],
        "call": lambda target, args, kwargs: target(*args, **kwargs),
        "getattr": getattr,
        "setattr": setattr,
        "getitem": lambda target, key: target[key],
        "iter": list,
        "len": len,
        "repr": repr,
        "str": str,
    }
    while True:
        try:
            request = recv(req)
        except EOFError:
            return
        try:
            op, args = request
            value = ops[op](*decode(args, ref))
            reply = {"ok": encode(value, keep)}
        except BaseException as exc:  # noqa: BLE001
            reply = {"error": _describe(exc)}
        send(resp, reply)


# ---------------------------------------------------------------------------------------------
# Judge: runs the tests, owns the verdict.


class ProgramFailed(BaseException):
    """The program could not answer: it exited, crashed, ran out of time or broke the protocol.

    A BaseException, so that a test's `except Exception` cannot swallow it; and the link stays
    failed, so no later call can succeed either.
    """


class Remote:
    """A function or object that lives in the worker. Compares equal only to itself; has no truth value."""

    __slots__ = ("_worker", "_ref")

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
        raise TypeError("the truth value of an object returned by the program is undefined in the sandbox")


class WorkerLink:
    def __init__(self, proc, req: int, resp: int, deadline: float, cap: int):
        self.proc, self.req, self.resp, self.deadline, self.cap = proc, req, resp, deadline, cap

    def _out(self, x):
        if type(x) is Remote and x._worker is self:
            return {"r": x._ref}
        raise TypeError(f"cannot pass a {type(x).__name__} to the program")

    def _ref(self, n):
        return Remote(self, n)

    failure: str | None = None
    cpu_limit = 0.0

    def fail(self, reason: str) -> ProgramFailed:
        self.failure = self.failure or reason
        return ProgramFailed(self.failure)

    def exchange(self, message):
        if self.failure:
            raise ProgramFailed(self.failure)
        try:
            send(self.req, message)
            return recv(self.resp, self.deadline, self.cap)
        except (BrokenPipeError, EOFError):
            raise self.fail(self.death()) from None
        except Timeout:
            raise self.fail("timed out") from None
        except (ValueError, RecursionError) as exc:
            raise self.fail(f"failed: bad reply from the program ({str(exc)[:100]})") from None

    def op(self, name: str, args: list):
        reply = self.exchange([name, encode(args, self._out)])
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
        try:
            return decode(reply["ok"], self._ref)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise self.fail(f"failed: bad reply from the program ({type(exc).__name__})") from None

    def death(self) -> str:
        try:
            status = self.proc.wait(timeout=max(0.1, min(2.0, self.deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 - still running but closed its pipe
            return "failed: the program closed its channel"
        if status in (-signal.SIGXCPU, -signal.SIGKILL) and self._cpu_spent():
            return "timed out"
        if status < 0:
            return f"crashed (signal {-status}: {signal.Signals(-status).name})"
        return f"failed: the program exited with status {status}"

    def _cpu_spent(self) -> bool:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime >= self.cpu_limit - 0.5


_LIBC = []


def _libc():
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _prctl(option: int, value: int) -> bool:
    return _libc().prctl(option, value, 0, 0, 0) == 0


_PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 4, 36, 38
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC = 2, 4, 4096, 16384
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    import ctypes

    libc = _libc()
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def private_filesystem(workdir: str, uid: int | None, disk_bytes: int, keep: list[str]) -> None:
    """Inside a private mount namespace: a fresh root-owned tmpfs over every world-writable directory
    and over every ancestor of `keep` that is closed to other users (e.g. /root, mode 700: this hides
    its secrets too), the `keep` directories (interpreter, this script) bound back in place, and a
    size-capped tmpfs owned by the program's uid at `workdir`."""
    covers = {d for d in WORLD_WRITABLE if os.path.isdir(d) and not os.path.islink(d)}
    keep = sorted({os.path.realpath(p) for p in keep})
    for path in keep:
        parts = path.split(os.sep)
        for i in range(2, len(parts)):
            ancestor = os.sep.join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                covers.add(ancestor)
                break
    rebind = [(p, os.open(p, os.O_PATH)) for p in keep if any(_under(p, c) for c in covers)]
    for cover in sorted(covers, key=len):
        _mount("tmpfs", cover, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=64k")
    for path, fd in rebind:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, None)
        os.close(fd)
    os.makedirs(workdir, exist_ok=True)
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    _mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=700,size={disk_bytes}{owner}")


def kill_everything(uid: int | None) -> None:
    """Kill every process the program started, wherever it went (other group, other session).

    With a uid of its own, a helper of that uid signals -1: all processes of that uid. Without, the
    judge is a child subreaper, so orphans of the program are re-parented to it and swept here.
    """
    if uid is not None:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                for _ in range(10_000):
                    os.kill(-1, signal.SIGKILL)
            except BaseException:  # noqa: BLE001 - ESRCH: nothing left of that uid
                pass
            os._exit(0)
        os.waitpid(pid, 0)
    for _ in range(1000):
        children = _children()
        if not children:
            break
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap()
    _reap()


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


def _drain(fd: int, cap: int, sink: list) -> None:
    kept = 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        if kept < cap:
            sink.append(chunk[: cap - kept])
            kept += len(sink[-1])


def _failure_line(exc: BaseException, tests: str) -> str:
    """`failed: <the first failing assertion or error>`, pointing at the test line that failed."""
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
    job = json.loads(sys.stdin.read())
    verdict_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)  # the tests' own prints must not reach the verdict channel
    start = time.monotonic()
    deadline = start + job["wall_s"]
    _prctl(_PR_SET_DUMPABLE, 0)
    if os.getpid() != 1:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    uid, workdir = job["uid"], job["workdir"]
    if job["mount_namespace"]:
        private_filesystem(workdir, uid, job["disk_bytes"], [*job["interpreter"], os.path.dirname(__file__)])
    elif uid is not None:
        os.chown(workdir, uid, uid)
    preimport = uid is not None and not job["mount_namespace"]
    output: list[bytes] = []
    try:
        result = _run_tests(job, deadline, preimport, output)
    finally:
        kill_everything(uid)
    result["output"] = b"".join(output).decode("utf-8", "replace")
    result["seconds"] = round(time.monotonic() - start, 3)
    os.write(verdict_fd, (json.dumps(result) + "\n").encode())


def _run_tests(job: dict, deadline: float, preimport: bool, output: list) -> dict:
    import subprocess

    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    out_r, out_w = os.pipe()
    config = {
        "rlimits": job["rlimits"],
        "workdir": job["workdir"],
        "uid": job["uid"],
        "preimport": preimport,
        "fds": [req_r, resp_w],
    }
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "worker", json.dumps(config)],
        stdin=subprocess.DEVNULL,
        stdout=out_w,
        stderr=out_w,
        pass_fds=(req_r, resp_w),
        cwd="/",
        env=job["env"],
        preexec_fn=lambda: _prctl(_PR_SET_NO_NEW_PRIVS, 1),
    )
    for fd in (req_r, resp_w, out_w):
        os.close(fd)
    drain = threading.Thread(target=_drain, args=(out_r, job["output_bytes"], output), daemon=True)
    drain.start()
    link = WorkerLink(proc, req_w, resp_r, deadline, job["message_bytes"])
    link.cpu_limit = job["cpu_s"]
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
        namespace: dict = {"__name__": "__judge__"}
        exec(compile(job["prelude"], "<prelude>", "exec"), namespace)
        used = _names(tests)
        for name in sorted(used & set(loaded.get("names", ()))):
            if name == job["entry_point"] or name not in namespace:
                namespace[name] = link.op("global", [name])
        if job["entry_point"] not in loaded.get("names", ()):
            return {"passed": False, "result": f"failed: the program does not define {job['entry_point']}"}
        exec(compile(tests, "<tests>", "exec"), namespace)
        if link.failure:
            return {"passed": False, "result": link.failure}
    except ProgramFailed as exc:
        return {"passed": False, "result": str(exc)}
    except RecursionError as exc:
        return {"passed": False, "result": _failure_line(exc, tests)}
    except Exception as exc:  # noqa: BLE001 - an assertion or an error raised through the program
        return {"passed": False, "result": _failure_line(exc, tests)}
    finally:
        for fd in (req_w, resp_r):
            os.close(fd)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        drain.join(timeout=0.5)
    return {"passed": True, "result": "passed"}


def _names(source: str) -> set[str]:
    import ast

    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}


def reap(uid: int) -> None:
    """Run by the harness after it had to kill a judge: sweep the processes of the program's uid."""
    kill_everything(uid)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "judge":
        judge()
    elif role == "worker":
        worker(json.loads(sys.argv[2]))
    elif role == "reap":
        reap(int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")
