"""The two processes inside the sandbox: a judge that runs the trusted tests, a worker that runs the program.

Started as `python -I -S sandbox_child.py judge` by harness/grading/sandbox.py. It imports only the
standard library (never the harness), so nothing of the harness lives in a process the program can reach.

Why two processes: a test is an honest judge only if the code under test cannot touch it. The
program is loaded into a worker, a fresh interpreter per program that sets rlimits, enters a
minimal read-only root (when there is a mount namespace), drops to an unprivileged uid of its own,
installs an audit hook, and then only answers calls ("call the entry point with these arguments")
with values encoded as plain data. The judge runs the dataset's test code against proxies of the
program's functions and decodes every returned value into builtins (int, str, list, ...), so an
object that claims to equal anything never reaches an `==`. The verdict is written by the judge
alone, to a pipe the worker does not hold and cannot open (other uid; the judge is non-dumpable and,
in a pid namespace, pid 1), so exit statuses, prints, signals and crashes of the program can only
ever make it fail. The worker never holds the tests either: it is exec'd, not forked from the judge.
"""

from __future__ import annotations

import builtins
import json
import os
import sys

# ---------------------------------------------------------------------------------------------
# Plain-data codec shared by judge and worker. JSON arrays are lists; every other container is a
# one-key object naming its type; {"r": n} is a reference to an object kept in the worker.


def encode(x, other):
    t = type(x)
    if x is None or t is bool or t is float or t is str:
        return x
    if t is int:  # big ints travel in hex: linear to convert both ways, unlike decimal
        return x if -(1 << 62) < x < 1 << 62 else {"i": format(x, "x")}
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
    if t is type and getattr(builtins, x.__name__, None) is x:
        return {"y": x.__name__}  # builtin types (`int`, `str`, ...) are values tests pass around
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
    if tag == "i":
        return int(v, 16)
    if tag == "y":
        value = getattr(builtins, v)
        if type(value) is not type:
            raise ValueError(f"{v!r} is not a builtin type")
        return value
    if tag == "r":
        return ref(v)
    raise ValueError(f"unknown tag {tag!r}")


def send(fd: int, message) -> None:
    send_text(fd, json.dumps(message))


def send_text(fd: int, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data) :]


class Timeout(Exception):
    pass


class Output:
    """The program's stdout+stderr, drained while waiting for replies so the program never blocks on
    a full pipe; the first `cap` bytes are kept."""

    def __init__(self, fd: int, cap: int):
        self.fd, self.source, self.cap, self.kept = fd, fd, cap, bytearray()

    def read(self) -> bool:
        chunk = os.read(self.fd, 1 << 16)
        self.kept += chunk[: max(0, self.cap - len(self.kept))]
        return bool(chunk)

    def drain(self) -> None:
        """What is left once every writer is dead."""
        import select

        while self.fd >= 0 and select.select([self.fd], [], [], 0.2)[0] and self.read():
            pass
        if self.source >= 0:
            os.close(self.source)
            self.fd = self.source = -1


def recv(fd: int, deadline: float | None = None, cap: int = 1 << 30, output: Output | None = None):
    """One message; Timeout past `deadline`, EOFError when the writer is gone, ValueError when over `cap`."""

    def read_exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            if deadline is not None:
                import select
                import time

                wait = deadline - time.monotonic()
                watched = [fd, output.fd] if output and output.fd >= 0 else [fd]
                ready = select.select(watched, [], [], max(wait, 0))[0] if wait > 0 else []
                if not ready:
                    raise Timeout
                if output and output.fd in ready and not output.read():
                    output.fd = -1
                if fd not in ready:
                    continue
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    size = int.from_bytes(read_exactly(4), "big")
    if size > cap:
        raise ValueError(f"message of {size} bytes exceeds the cap of {cap}")
    return json.loads(read_exactly(size))


# ---------------------------------------------------------------------------------------------
# Worker: runs the untrusted program.

# Imported before dropping privileges when the interpreter's files are unreadable to the program's
# uid and no mount namespace can expose them (e.g. Python under /root, mode 700).
PREIMPORT = [
    "math",
    "cmath",
    "re",
    "collections",
    "collections.abc",
    "itertools",
    "functools",
    "heapq",
    "bisect",
    "string",
    "operator",
    "copy",
    "random",
    "fractions",
    "decimal",
    "statistics",
    "datetime",
    "hashlib",
    "array",
    "struct",
    "textwrap",
    "unicodedata",
    "numbers",
    "typing",
    "time",
    "signal",
    "json",
    "subprocess",
]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # event -> positions of path arguments that must stay inside the workdir
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "shutil.rmtree": (0,),
    "os.chdir": (),
    "os.chroot": (0,),
}
_DENIED_EVENTS = {
    "socket.__new__",
    "socket.connect",
    "socket.bind",
    "socket.getaddrinfo",
    "os.setuid",
    "os.setgid",
}
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


def _drop_capabilities() -> None:
    """Empty the bounding, effective, permitted and inheritable sets (so no exec can regain any), then
    forget ctypes, so that the program has to import it afresh, which the audit hook refuses."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; EINVAL past the last capability

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        raise SystemExit(f"could not drop capabilities: {os.strerror(ctypes.get_errno())}")
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]


def _describe(exc: BaseException) -> list:
    return [type(exc).__name__, str(exc)[:500]]


def worker(config: dict) -> None:
    import resource

    for name, soft, hard in config["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if config["root"]:
        os.chroot(config["root"])
    workdir = config["workdir"]
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    if config["preimport"]:
        for module in PREIMPORT:
            __import__(module)
    uid = config["uid"]
    if uid is None and os.geteuid() == 0:
        _drop_capabilities()  # root of a user namespace (the harness is not root): keep none of its powers
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
        exec(compile(program, "<program>", "exec"), namespace)  # noqa: S102 - running it is the point
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
        "bool": bool,
    }
    while True:
        try:
            request = recv(req)
        except EOFError:
            return
        try:
            op, args = request
            value = ops[op](*decode(args, ref))
            reply = json.dumps({"ok": encode(value, keep)})
        except BaseException as exc:  # noqa: BLE001
            reply = json.dumps({"error": _describe(exc)})
        send_text(resp, reply)


# ---------------------------------------------------------------------------------------------
# Judge: runs the tests, owns the verdict.


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
    """The judge's side of the worker: requests out, plain values (or Remote proxies) back."""

    failure: str | None = None

    def __init__(self, pid: int, req: int, resp: int, output: Output, job: dict):
        self.pid, self.req, self.resp, self.output = pid, req, resp, output
        # The wall-clock budget is spent only while the judge waits for the program: the judge's own
        # work (HumanEval+ runs the reference solution on every input) is not the program's time.
        self.budget = float(job["wall_s"])
        self.cap, self.cpu_limit = job["message_bytes"], job["cpu_s"]
        self.status: int | None = None

    def _out(self, x):
        if type(x) is Remote and x._worker is self:
            return {"r": x._ref}
        raise TypeError(f"cannot pass a {type(x).__name__} to the program")

    def _ref(self, n):
        return Remote(self, n)

    def fail(self, reason: str) -> ProgramFailed:
        self.failure = self.failure or reason
        return ProgramFailed(self.failure)

    def exchange(self, message):
        if self.failure:
            raise ProgramFailed(self.failure)
        import time

        start = time.monotonic()
        self.deadline = start + self.budget
        try:
            send(self.req, message)
            return recv(self.resp, self.deadline, self.cap, self.output)
        except (BrokenPipeError, EOFError):
            raise self.fail(self.death()) from None
        except Timeout:
            raise self.fail("timed out") from None
        except (ValueError, RecursionError) as exc:
            raise self.fail(f"failed: bad reply from the program ({str(exc)[:100]})") from None
        finally:
            self.budget -= time.monotonic() - start

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

    def wait(self, timeout: float) -> int | None:
        """The worker's exit status (negative: killed by that signal), or None if still running."""
        import time

        end = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() >= end:
                return None
            else:
                time.sleep(0.005)
        return self.status

    def death(self) -> str:
        import resource
        import signal
        import time

        status = self.wait(max(0.1, min(2.0, self.deadline - time.monotonic())))
        if status is None:
            return "failed: the program closed its channel"
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if status in (-signal.SIGXCPU, -signal.SIGKILL) and usage.ru_utime + usage.ru_stime >= self.cpu_limit - 0.5:
            return "timed out"
        if status < 0:
            return f"crashed (signal {-status}: {signal.Signals(-status).name})"
        return f"failed: the program exited with status {status}"


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


def fresh_workdir(path: str, uid: int | None, disk_bytes: int) -> None:
    """A new, empty, size-capped tmpfs for one program; unmounting it afterwards discards everything."""
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=700,size={disk_bytes}{owner}")


def _umount(path: str) -> None:
    _MNT_DETACH = 2
    _libc().umount2(path.encode(), _MNT_DETACH)


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def kill_everything(uid: int | None) -> None:
    """Kill every process the program started, wherever it went (other group, other session).

    With a uid of its own, a helper of that uid signals -1: all processes of that uid. Without, the
    judge is a child subreaper (or pid 1), so orphans of the program are re-parented to it and swept here.
    """
    import signal

    if uid is not None:
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
    the namespace setup per program; every program still gets a fresh worker interpreter, a fresh
    working directory, and a sweep of everything it started before the next job begins.
    """
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
    uid, root = setup["uid"], None
    if setup["mount_namespace"]:
        root = setup["root"]
        minimal_root(root, setup["interpreter"] + [os.path.dirname(__file__)], setup["hide"])
    worker_code = _compiled_copy(setup["root"])
    while True:
        try:
            job = recv(requests)
        except EOFError:
            return
        start = time.monotonic()
        if root is not None:
            workdir = "/program"
            fresh_workdir(root + workdir, uid, job["disk_bytes"])
        else:
            workdir = job["workdir"]
            if uid is not None:
                os.chown(workdir, uid, uid)
        config = {
            "rlimits": job["rlimits"],
            "root": root,
            "workdir": workdir,
            "uid": uid,
            "preimport": uid is not None and root is None,
        }
        output = Output(-1, job["output_bytes"])
        try:
            result = _run_tests(job, config, setup["env"], output, worker_code)
        except Exception as exc:  # noqa: BLE001 - a fault of the judge is reported, never a pass
            result = {"passed": False, "result": f"failed: sandbox error ({type(exc).__name__}: {exc})"}
        finally:
            kill_everything(uid)
            output.drain()
        if root is not None:
            _umount(root + workdir)
        result["output"] = output.kept.decode("utf-8", "replace")
        result["seconds"] = round(time.monotonic() - start, 3)
        send(verdicts, result)


def _compiled_copy(directory: str) -> str:
    """This file compiled once per judge, so that a worker does not spend most of its start-up
    compiling it (bytecode caches are often disabled; PYTHONDONTWRITEBYTECODE)."""
    import py_compile

    return py_compile.compile(__file__, cfile=os.path.join(directory, ".sandbox_child.pyc"), doraise=True)


def _spawn_worker(config: dict, env: dict, code: str) -> tuple[int, int, int, int]:
    """Start the worker as a fresh interpreter (not a fork: it must not inherit the tests in memory)."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    out_r, out_w = os.pipe()
    config = {**config, "fds": [req_r, resp_w]}
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd in (req_r, resp_w):
        os.set_inheritable(fd, True)
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-I", "-S", "-B", code, "worker", json.dumps(config)],
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, out_w, 2),
        ],
    )
    for fd in (req_r, resp_w, out_w, devnull):
        os.close(fd)
    return pid, req_w, resp_r, out_r


def _run_tests(job: dict, config: dict, env: dict, output: Output, worker_code: str) -> dict:
    import signal

    pid, req_w, resp_r, out_r = _spawn_worker(config, env, worker_code)
    output.fd = output.source = out_r
    link = WorkerLink(pid, req_w, resp_r, output, job)
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
        for name in sorted(_names(tests) & names):
            if name == job["entry_point"] or name not in namespace:
                namespace[name] = link.op("global", [name])
        exec(compile(tests, "<tests>", "exec"), namespace)  # noqa: S102 - the dataset's trusted tests
        if link.failure:
            return {"passed": False, "result": link.failure}
    except ProgramFailed as exc:
        return {"passed": False, "result": str(exc)}
    except Exception as exc:  # noqa: BLE001 - an assertion, or an error raised through the program
        return {"passed": False, "result": _failure_line(exc, tests)}
    finally:
        for fd in (req_w, resp_r):
            os.close(fd)
        if link.wait(0) is None:
            os.kill(pid, signal.SIGKILL)
            link.wait(5)
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
