"""Several OpenAI-compatible servers as one (--base-url given more than once): requests spread with
--concurrency per server, failover when a server dies mid-run with nothing lost or doubled, one
clear line when none is left, and runs that resume on other servers. Scripted servers on 127.0.0.1
(tests/fake_openai_server.py) make each failure happen at a known request; test_llamacpp_server.py
kills a real server."""

import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.config import RunConfig
from harness.engines.base import SamplingSettings
from harness.engines.openai import OpenAIEngine
from harness.errors import HarnessError
from harness.run import execute_run
from tests.conftest import MATH500, require_shared
from tests.fake_openai_server import FakeOpenAIServer

CONVS = [[{"role": "user", "content": f"What is {i}+{i}?"}] for i in range(10)]


def _engine(*servers, concurrency=2):
    # No client retries: a dead server is left out at its first failed request, not after backoff.
    return OpenAIEngine.from_server([s.base_url for s in servers], concurrency=concurrency, max_retries=0)


def _texts(out):
    return [[c.text for c in completions] for completions in out]


def _unused_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_requests_spread_over_the_servers_with_concurrency_per_server():
    with FakeOpenAIServer(delay=0.2) as a, FakeOpenAIServer(delay=0.2) as b:
        out = _engine(a, b, concurrency=2).chat(CONVS, SamplingSettings(4))
    assert [len(c) for c in out] == [1] * 10
    assert (a.max_in_flight, b.max_in_flight) == (2, 2)  # 2 each, 4 at once in all
    assert len(a.requests) + len(b.requests) == 10 and min(len(a.requests), len(b.requests)) >= 3


def test_a_server_that_dies_mid_call_loses_nothing_and_doubles_nothing(caplog):
    """Each conversation needs 2 requests (the servers answer 1 of n=2), so a conversation may get
    its completions from both servers; server a dies as its 3rd request arrives. The completions
    equal those of one healthy server, and the answered requests add up to exactly those one healthy
    server answers."""
    settings = SamplingSettings(4, n=2, temperature=1.0)
    seeds = list(range(100, 110))
    with FakeOpenAIServer(max_n=1) as alone:
        expected = _texts(_engine(alone).chat(CONVS, settings, seeds=seeds))
    assert alone.answered == 20
    with (
        FakeOpenAIServer(max_n=1, delay=0.05, die_at=3) as a,
        FakeOpenAIServer(max_n=1, delay=0.05) as b,
        caplog.at_level(logging.WARNING, logger="score_eval"),
    ):
        engine = _engine(a, b)
        done = []
        out = engine.chat(CONVS, settings, seeds=seeds, on_done=lambda i, cs: done.append(i))
    assert _texts(out) == expected
    assert sorted(done) == list(range(10))  # each conversation reported once
    # a answered its 1st request and, unless it was still in flight at a's death, its 2nd
    assert 1 <= a.answered <= 2 and a.answered + b.answered == 20
    assert engine.pool.servers[0].down and engine.pool.servers[1].down is None
    assert f"the server at {a.base_url} stopped answering" in caplog.text and b.base_url in caplog.text


def test_requests_in_flight_on_a_server_that_dies_are_sent_again_to_another():
    """a answers slowly and dies with its 2 slots busy: both requests go to b, and b's answers are
    the only ones."""
    with FakeOpenAIServer(delay=1.0) as a, FakeOpenAIServer(delay=0.01) as b:
        with ThreadPoolExecutor(1) as background:
            out = background.submit(_engine(a, b).chat, CONVS, SamplingSettings(4))
            deadline = time.monotonic() + 30
            while a.in_flight < 2:  # b takes 2 requests at a time, so a soon holds 2
                assert time.monotonic() < deadline and not out.done()
                time.sleep(0.01)
            a.die()
            texts = _texts(out.result(timeout=60))
    assert texts == [[f"turn 1: {c[0]['content']} seed={i} #0"] for i, c in enumerate(CONVS)]
    assert len(a.requests) == 2 and a.answered == 0 and b.answered == 10


def test_when_every_server_dies_the_error_is_one_line_naming_each():
    with FakeOpenAIServer(die_at=2) as a, FakeOpenAIServer(die_at=2) as b:
        engine = _engine(a, b, concurrency=1)
        with pytest.raises(HarnessError) as info:
            engine.chat(CONVS, SamplingSettings(4))
    message = str(info.value)
    assert message.startswith("every server stopped answering: ") and "\n" not in message
    assert a.base_url in message and b.base_url in message and "run the same command again" in message


def test_a_server_unreachable_at_start_is_refused_by_name():
    dead = _unused_url()
    with FakeOpenAIServer() as a:
        with pytest.raises(HarnessError, match=f"^cannot reach the server at {dead} "):
            OpenAIEngine.from_server([a.base_url, dead])


def test_servers_must_serve_the_same_model_unless_it_is_named():
    with FakeOpenAIServer(models=["m1"]) as a, FakeOpenAIServer(models=["m2"]) as b:
        with pytest.raises(HarnessError, match=f"the server at {b.base_url} serves m2, not m1"):
            OpenAIEngine.from_server([a.base_url, b.base_url])
        assert OpenAIEngine.from_server([a.base_url, b.base_url], model="m1").model_name == "m1"


def test_the_same_base_url_twice_is_refused():
    with pytest.raises(HarnessError, match="--base-url http://x:8000/v1 is given more than once"):
        RunConfig(backend="openai", base_url=("http://x:8000/v1", "http://x:8000/v1")).validate()


def _run(tmp_path, engine, name, **extra):
    config = RunConfig(
        backend="openai",
        data=str(require_shared(MATH500)),
        limit=6,
        turns=2,
        output_dir=str(tmp_path),
        run_name=name,
        base_url=tuple(s.url for s in engine.pool.servers),
        **extra,
    )
    return execute_run(config, engine=engine)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def _responses(records):
    return {r["id"]: [t["response"] for t in r["turns"]] for r in records}


def test_a_run_whose_server_dies_mid_turn_equals_a_one_server_run(tmp_path):
    with FakeOpenAIServer() as alone:
        reference = _records(_run(tmp_path, _engine(alone), "one").run_dir)
    with FakeOpenAIServer(delay=0.05, die_at=4) as a, FakeOpenAIServer(delay=0.05) as b:
        result = _run(tmp_path, _engine(a, b), "two")
    records = _records(result.run_dir)
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    assert all(len(r["turns"]) == 2 for r in records)
    assert _responses(records) == _responses(reference)
    assert a.answered + b.answered == 12 and a.dead.is_set()
    engine_facts = json.loads((result.run_dir / "config.json").read_text())["engine"]
    assert engine_facts["servers"] == [a.base_url, b.base_url] and engine_facts["concurrency"] == 2


def test_a_run_whose_servers_all_die_resumes_on_other_servers(tmp_path):
    """All servers gone mid-run: one error, the journal keeps every answer that came back, and --resume
    on a new server (another list of servers, another concurrency) asks only for the rest and finishes
    with the records of an unbroken run. (Episodes are pipelined, so the 8 answers are not turn 1's 6.)"""
    with FakeOpenAIServer() as alone:
        reference = _records(_run(tmp_path, _engine(alone), "whole").run_dir)
    with FakeOpenAIServer(die_at=5) as a, FakeOpenAIServer(die_at=5) as b:
        # 6 episodes x 2 turns = 12 requests; each server dies at its 5th, so 8 are answered.
        with pytest.raises(HarnessError, match="every server stopped answering"):
            _run(tmp_path, _engine(a, b, concurrency=1), "broken")
        answered = a.answered + b.answered
    journal = (tmp_path / "broken" / "journal.jsonl").read_text().splitlines()
    saved = sum("response" in json.loads(line) for line in journal)
    assert saved == answered == 8  # every answer that came back is kept
    with FakeOpenAIServer() as c:
        result = _run(tmp_path, _engine(c, concurrency=3), "broken", resume=True)
        asked_again = len(c.requests)
    assert asked_again == 12 - saved and _responses(_records(result.run_dir)) == _responses(reference)


def test_base_url_given_twice_on_the_command_line_uses_both_servers(tmp_path):
    from tests.conftest import run_cli

    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        args = ["run", "--backend", "openai", "--base-url", a.base_url, "--base-url", b.base_url]
        args += ["--data", str(require_shared(MATH500)), "--limit", "4", "--concurrency", "1"]
        result = run_cli([*args, "--output-dir", str(tmp_path), "--run-name", "cli"], timeout=300)
    assert result.returncode == 0, result.stderr
    assert a.answered > 0 and b.answered > 0 and a.answered + b.answered == 8
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["engine"]["servers"] == [a.base_url, b.base_url]
    assert config["settings"]["base_url"] == [a.base_url, b.base_url]


def test_a_dead_server_is_left_out_at_its_first_failure_while_another_serves():
    """With the client's retries on (6, the default), a server that drops every connection got 7
    attempts, about 23 s of backoff, before it was left out; while another server is live it gets one.
    a stays listening and drops each request, so every attempt reaches it and is counted."""
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        engine = OpenAIEngine.from_server([a.base_url, b.base_url], concurrency=1)
        a.dead.set()  # from now on drops every request, its listening socket kept
        out = engine.chat(CONVS[:4], SamplingSettings(4))
    assert _texts(out) == [[f"turn 1: {c[0]['content']} seed={i} #0"] for i, c in enumerate(CONVS[:4])]
    assert len(a.requests) == 1 and b.answered == 4 and engine.pool.servers[0].down


def test_a_busy_answer_is_retried_on_the_same_server_while_another_serves():
    """429 and 5xx come from a server that is up: the client's retries still apply, and it stays in."""
    with FakeOpenAIServer(fail_first=[503, 429]) as a, FakeOpenAIServer(delay=0.5) as b:
        engine = OpenAIEngine.from_server([a.base_url, b.base_url], concurrency=1)
        out = engine.chat(CONVS[:2], SamplingSettings(4))
    assert [len(c) for c in out] == [1, 1] and engine.pool.servers[0].down is None
    assert len(a.requests) >= 3 and a.answered >= 1
