"""The openai engine's request threads (engines/openai.py RequestThreads) under failure: a call that
raises (also BaseException), a future cancelled before it runs, a failed `chat`, a server that dies,
engines made and dropped (do their threads stop?), concurrency 1 and 64. Each case checks that the
threads keep serving afterwards: a thread that died silently would leave later calls waiting forever."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from harness.engines.base import SamplingSettings
from harness.engines.openai import OpenAIEngine, RequestThreads
from harness.errors import HarnessError
from tests.fake_openai_server import FakeOpenAIServer

CONVS = [[{"role": "user", "content": f"What is {i}+{i}?"}] for i in range(8)]


def _engine(*servers, concurrency=2, max_retries=0):
    return OpenAIEngine.from_server([s.base_url for s in servers], concurrency=concurrency, max_retries=max_retries)


def _request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("openai-submit")]


def _wait_until(condition, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_a_call_that_raises_hands_its_error_to_the_future_and_the_thread_serves_on(error):
    """One thread: if the raise killed it, the second call would never run (result() would time out)."""

    def fail():
        raise error

    threads = RequestThreads(1, "redteam")
    failed = threads.submit(fail)
    assert failed.exception(timeout=5) is error
    assert threads.submit(lambda x: x + 1, 41).result(timeout=5) == 42


def test_a_future_cancelled_before_it_runs_is_skipped_and_the_next_call_runs():
    threads = RequestThreads(1, "redteam")
    gate = threading.Event()
    blocker = threads.submit(gate.wait, 5)
    ran = []
    cancelled = threads.submit(ran.append, "cancelled call ran")
    assert cancelled.cancel()
    after = threads.submit(lambda: "after")
    gate.set()
    assert blocker.result(timeout=5) is True
    assert after.result(timeout=5) == "after"
    assert ran == [] and cancelled.cancelled()


def test_dropped_request_threads_stop():
    """The finalizer tells the threads to stop once the pool is collected; none is left behind."""
    before = len([t for t in threading.enumerate() if t.name.startswith("redteam-drop")])
    threads = RequestThreads(4, "redteam-drop")
    assert threads.submit(lambda: 1).result(timeout=5) == 1
    del threads
    gc.collect()
    assert _wait_until(lambda: len([t for t in threading.enumerate() if t.name.startswith("redteam-drop")]) == before)


def test_engines_made_and_dropped_leave_no_request_threads_behind():
    """Twenty engines, each used then dropped: their threads stop (the engine's cached pool, the
    bound `_complete` held by a finished call and a failed call's traceback keep nothing alive)."""
    gc.collect()
    assert _wait_until(lambda: not _request_threads())
    with FakeOpenAIServer(fail_first=[400] * 10) as server:
        for _ in range(20):
            engine = _engine(server, concurrency=3)
            try:  # the first 10 requests fail: the failed future's traceback holds the engine's frames
                engine.chat(CONVS[:1], SamplingSettings(4))
            except HarnessError:
                pass
            del engine
    gc.collect()
    assert _wait_until(lambda: not _request_threads()), [t.name for t in _request_threads()]


def test_a_failed_chat_leaves_the_threads_serving():
    """chat's `finally: future.cancel()` after a failed request: the cancelled requests are skipped,
    the ones in flight finish, and the next chat on the same engine gets every answer."""
    with FakeOpenAIServer(fail_first=[400], delay=0.05) as server:
        engine = _engine(server, concurrency=1)
        with pytest.raises(HarnessError, match="rejected a request"):
            engine.chat(CONVS, SamplingSettings(4))
        sent = len(server.requests)
        assert sent < len(CONVS)  # the rest were cancelled before they went out
        out = engine.chat(CONVS, SamplingSettings(4))
    assert [len(c) for c in out] == [1] * len(CONVS)
    assert all(c[0].text.startswith("turn 1: What is") for c in out)


def test_a_server_that_dies_fails_over_and_the_threads_serve_on(caplog):
    with FakeOpenAIServer(delay=0.05, die_at=2) as a, FakeOpenAIServer(delay=0.05) as b:
        engine = _engine(a, b, concurrency=2)
        out = engine.chat(CONVS, SamplingSettings(4))
        again = engine.chat(CONVS, SamplingSettings(4))
    assert [len(c) for c in out] == [1] * len(CONVS) and [len(c) for c in again] == [1] * len(CONVS)
    assert "stopped answering" in caplog.text


def test_the_last_server_dying_fails_every_waiting_request_with_one_error_and_nothing_hangs():
    with FakeOpenAIServer(delay=0.05, die_at=3) as server:
        engine = _engine(server, concurrency=2)
        futures = [engine.submit(c, SamplingSettings(4), 0) for c in CONVS]
        errors = [f.exception(timeout=30) for f in futures]
    # Request 1 is answered before request 3 arrives (it takes a free thread only then); from the
    # death on, every request fails with the one error, and none waits forever.
    assert errors[0] is None and all(isinstance(e, HarnessError) for e in errors[2:]), errors


@pytest.mark.parametrize("concurrency", [1, 64])
def test_concurrency_1_and_64_answer_everything_with_that_many_in_flight(concurrency):
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(2 * concurrency)]
    with FakeOpenAIServer(delay=0.2) as server:
        # Client retries on: 64 connections at once overflow the fake server's listen backlog (5),
        # and a refused connect is retried (the same happened with ThreadPoolExecutor).
        engine = _engine(server, concurrency=concurrency, max_retries=6)
        out = engine.chat(convs, SamplingSettings(4))
    assert [c[0].text for c in out] == [f"turn 1: q{i} seed={i} #0" for i in range(len(convs))]
    assert server.max_in_flight <= concurrency  # never more than asked; backlog retries stagger the 64


def test_no_request_thread_is_a_clear_error_not_a_run_that_waits_forever():
    """concurrency 0 (OpenAIEngine.from_server takes it; only the CLI checks --concurrency): with no
    thread, a submitted request would never run. ThreadPoolExecutor(max_workers=0) raised; so must this."""
    with FakeOpenAIServer() as server:
        engine = _engine(server, concurrency=0)
        with pytest.raises(ValueError, match="concurrency"):
            engine.submit(CONVS[0], SamplingSettings(4), 0).result(timeout=5)


def _serve_in_a_process(delay: float):
    """A fake server in a process of its own, so that the test can kill it as SIGKILL would: the
    requests in flight there fail at once with a dropped connection."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import time\nfrom tests.fake_openai_server import FakeOpenAIServer\n"
        f"with FakeOpenAIServer(delay={delay}) as s:\n    print(s.base_url, flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE
    )
    return proc, proc.stdout.readline().decode().strip()


def test_ctrl_c_while_the_servers_die_exits_with_the_resume_command_and_no_traceback(tmp_path):
    """Ctrl-C reaches the servers too (started from the same script: one process group), so as the
    run exits, the request threads see their connections dropped, take the servers out and log it,
    and the last server's requests fail. None of that may hold the exit or print a traceback or a
    fatal error from the interpreter's shutdown."""
    import signal

    from tests.conftest import start_cli

    servers = [_serve_in_a_process(60) for _ in range(2)]
    try:
        args = ["run", "--task", "arithmetic", "--limit", "6", "--backend", "openai", "--concurrency", "2"]
        for _, url in servers:
            args += ["--base-url", url]
        args += ["--model", "fake-model", "--output-dir", str(tmp_path), "--run-name", "r"]
        proc = start_cli(args, env={"OPENAI_API_KEY": "x"})
        # The run is in flight once its config is written (4 requests go out right after).
        assert _wait_until(lambda: (tmp_path / "r" / "config.json").is_file() or proc.poll() is not None, 60)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        for server, _ in servers:
            server.kill()
        interrupted = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        waited = time.monotonic() - interrupted
    finally:
        for server, _ in servers:
            server.kill()
            server.wait()
    assert proc.returncode == 130, stderr
    assert "Resume with:" in stderr
    for bad in ("Traceback", "Fatal Python error", "Exception ignored", "Exception in thread"):
        assert bad not in stderr, stderr
    assert waited < 20, f"exited {waited:.0f} s after Ctrl-C"
