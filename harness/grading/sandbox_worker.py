"""The worker: the one process that runs the untrusted program, a fresh one per program.

Forked by the spawner (below), a clean interpreter the judge (sandbox_judge.py) starts once as
`python -I -S -B sandbox_worker.pyc`, from a compiled copy in the program's root, which it enters
(the minimal read-only root, when there is a mount namespace). A worker sets its rlimits, moves into
the program's directory, drops to the program's uid, installs an audit hook, loads the program,
and then only answers calls ("call the entry point with these arguments") with values encoded as
plain data. It never holds the tests (the spawner is exec'd, not forked from the judge, and never
sees them) and it cannot write the verdict (the judge owns that pipe).

What a program may import: the standard library, and nothing else, in every mode. The interpreter
runs with `-I -S` (no site-packages on sys.path); in the full sandbox every site-packages and
dist-packages directory is an empty tmpfs; in every mode the audit hook refuses to list or read
files under such a directory, so appending one to sys.path finds nothing there.
"""

from __future__ import annotations

import builtins
import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # last: a sibling math.py must not hide the stdlib
from sandbox_protocol import Decoder, dumps, encode, loads, recv, send, send_text  # noqa: E402 - found beside this file

sys.path.pop()

# Imported by the spawner, before any program, as root: programs import them often (a fork shares
# them for free), and they stay importable where the interpreter's files are unreadable to the
# program's uid and no mount namespace can expose them (e.g. Python under /root, mode 700).
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
_PACKAGE_DIRS = ("site-packages", "dist-packages")  # installed packages: not the standard library


def audit_hook(workdir: str):
    """A layer over the kernel's checks that turns the common escapes into readable errors.

    It cannot be a boundary on its own (C code and child processes bypass it), which is why it
    also refuses ctypes; the uid, the namespaces and the rlimits are the boundary.
    """
    root = os.path.realpath(workdir)
    parent = os.getppid()

    def full(path) -> str:
        return os.path.realpath(os.path.join(root, os.fsdecode(path)))

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        path = full(path)
        return path == root or path.startswith(root + os.sep) or path == os.devnull

    def installed(path) -> bool:
        return not isinstance(path, int) and any(d in full(path).split(os.sep) for d in _PACKAGE_DIRS)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = bool(flags & _WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is denied ({path})")
            if path is not None and installed(path):
                raise PermissionError(f"sandbox: only the standard library may be imported ({path})")
        elif event in ("os.listdir", "os.scandir") and args[0] is not None and installed(args[0]):
            raise PermissionError("sandbox: only the standard library may be imported")
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


def syscall_filter():
    """A function that forbids some system calls to this process and all it starts (a seccomp filter:
    EPERM), or None on an architecture not listed here. inotify and fanotify: watching the host's
    files that the full sandbox binds read-only (/usr, the interpreter) would show other processes'
    activity. The kernel key calls (add_key, request_key, keyctl): a uid's keyrings are not
    namespaced and outlive its processes, so a key one program adds would be there for the next
    program of the same (recycled) uid, and stay in the kernel after the harness exits.

    Built once, in the spawner: ctypes is then forgotten again (see _drop_capabilities)."""
    import ctypes
    import platform

    # inotify_init, inotify_init1, fanotify_init, add_key, request_key, keyctl (aarch64 has no inotify_init)
    arches = {"x86_64": (0xC000003E, (253, 294, 300, 248, 249, 250)), "aarch64": (0xC00000B7, (26, 262, 217, 218, 219))}
    if platform.machine() not in arches:
        return None
    arch, calls = arches[platform.machine()]
    load, equal, at_least, give = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(calls)
    program = [(load, 0, 0, 4), (equal, 0, n + 2, arch), (load, 0, 0, 0), (at_least, n + 1, 0, 0x40000000)]
    program += [(equal, n - i, 0, call) for i, call in enumerate(calls)]  # x32 numbers above: denied too
    program += [(give, 0, 0, allow), (give, 0, 0, deny)]

    class Instruction(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Instruction))]

    instructions = (Instruction * len(program))(*program)
    compiled = Program(len(program), instructions)
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    mode = ctypes.c_ulong(2)  # SECCOMP_MODE_FILTER
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]

    def install() -> bool:
        return prctl(22, mode, ctypes.byref(compiled), 0, 0) == 0  # PR_SET_SECCOMP

    return install


def _enter(config: dict, forbid_syscalls=None) -> None:
    """Limits, directory, uid, seccomp filter and audit hook, in that order (each takes powers away)."""
    import resource

    for name, soft, hard in config["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    workdir = config["workdir"]
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    uid = config["uid"]
    if uid is None and os.geteuid() == 0:
        _drop_capabilities()  # root of a user namespace (the harness is not root): keep none of its powers
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("could not drop privileges")
    if forbid_syscalls is not None and not forbid_syscalls():
        raise SystemExit("could not install the seccomp filter")
    sys.addaudithook(audit_hook(workdir))


# A value of a subclass of one of these crosses as its base class's value (a Counter subclass as a
# Counter, an IntEnum as an int): the judge rebuilds it, so the subclass's own methods never count.
_BASES = [
    ("collections", "Counter"),
    ("collections", "OrderedDict"),
    ("collections", "deque"),
    ("fractions", "Fraction"),
    ("decimal", "Decimal"),
]


def _unwrapped(x):
    """The value a standard-library wrapper stands for, or None: each of these compares equal to it in
    Python (`UserList([1]) == [1]`, `MappingProxyType(d) == d`, `memoryview(b"a") == b"a"`), so it
    crosses as that value. Dict views stay handles: a keys view equals a set but iterates in order,
    and no one plain type does both."""
    collections = sys.modules.get("collections")
    if collections is not None:
        if isinstance(x, collections.UserList):
            return list(x.data)
        if isinstance(x, collections.UserString):
            return str(x.data)
        if isinstance(x, (collections.UserDict, collections.ChainMap)):
            return dict(x.items())
    if isinstance(x, type(type.__dict__)):  # types.MappingProxyType
        return dict(x)
    if isinstance(x, memoryview) and x.format == "B" and x.ndim == 1:
        return x.tobytes()
    return None


def serve(req: int, resp: int) -> None:
    """Load the program, then answer the judge's requests until it closes the channel."""
    refs: list = []

    def plain(x):
        """A value of an unlisted type: its base type's value where it has one, else a reference."""
        if isinstance(x, int):
            return encode(int.__index__(x), plain)
        if isinstance(x, float):
            return float.__float__(x)
        if isinstance(x, str):
            return str.__str__(x)
        for module, name in _BASES:
            base = getattr(sys.modules.get(module), name, None)
            if base is not None and isinstance(x, base):
                if base.__name__ == "Decimal":
                    return encode(base(base.__str__(x)), plain)
                if base.__name__ == "Fraction":
                    return encode(base(int(base.numerator.__get__(x)), int(base.denominator.__get__(x))), plain)
                return encode(base(dict(dict.items(x)) if issubclass(base, dict) else base.__iter__(x)), plain)
        for base in (list, tuple, set, frozenset, bytes, bytearray):
            if isinstance(x, base):
                return encode(base(base.__iter__(x)), plain)
        if isinstance(x, dict):
            return {"d": [[encode(k, plain), encode(v, plain)] for k, v in dict.items(x)]}
        if isinstance(x, complex):
            return encode(complex(complex.real.__get__(x), complex.imag.__get__(x)), plain)
        wrapped = _unwrapped(x)
        if wrapped is not None:
            return encode(wrapped, plain)
        refs.append(x)
        return {"r": len(refs) - 1}

    decode = Decoder(refs.__getitem__)
    # The program is module `solution`, importable by name: pickle finds its functions there, so that
    # multiprocessing can send them to a pool's processes (forked from this one).
    module = type(sys)("solution")
    module.__builtins__ = builtins
    sys.modules["solution"] = module
    namespace = module.__dict__
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
            value = ops[op](*decode(args))
            reply = dumps({"ok": encode(value, plain)})
        except BaseException as exc:  # noqa: BLE001
            reply = dumps({"error": _describe(exc)})
        send_text(resp, reply)


def spawner(channel: int, root: str | None) -> None:
    """Fork one worker per program, on the judge's request, from this clean interpreter.

    Started once per judge (exec'd, so it never holds any tests), it imports the standard library
    modules programs use most, then waits. Forking it costs about a millisecond, where a fresh
    interpreter that imports `typing` costs ten or more: most of the sandbox's price per program.
    Each request carries the worker's config and its three pipes; the reply is the worker's pid, and
    later its exit status and CPU time. A worker closes this channel before it does anything else.
    """
    import socket

    for module in PREIMPORT:
        __import__(module)
    forbid_syscalls = syscall_filter()
    if root:
        os.chroot(root)
        os.chdir("/")
    link = socket.socket(fileno=channel)
    while True:
        message, fds, _, _ = socket.recv_fds(link, 1 << 16, 3)
        if not message:
            return
        config = loads(message)
        fresh_ipc = config["fresh_ipc"] and _unshare_ipc()
        pid = os.fork()
        if pid == 0:
            link.close()
            _worker(config, forbid_syscalls, *fds)
        for fd in fds:
            os.close(fd)
        link.send(dumps({"pid": pid, "fresh_ipc": fresh_ipc}).encode())
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
        link.send(dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status), "cpu": cpu}).encode())


def _unshare_ipc() -> bool:
    """Move the spawner, and so the worker it forks next, into a new IPC namespace: SysV shared
    memory, semaphores and message queues of earlier programs are out of reach, and freed with their
    namespace once their last process is gone. ctypes is forgotten again afterwards (see
    _drop_capabilities)."""
    import ctypes

    done = ctypes.CDLL(None, use_errno=True).unshare(0x08000000) == 0  # CLONE_NEWIPC
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    return done


def _worker(config: dict, forbid_syscalls, req: int, resp: int, out: int) -> None:
    """The forked worker: output to its pipe, then limits, uid, hook, and the program. Never returns."""
    code = 1
    try:
        for fd in (1, 2):
            os.dup2(out, fd)
        os.close(out)
        _enter(config, forbid_syscalls)
        serve(req, resp)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the set-up failed: say why on the program's output
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001, S110 - a program may have replaced or closed them
                pass
        os._exit(code)


if __name__ == "__main__":
    spawner(int(sys.argv[1]), sys.argv[2] or None)
