"""`score-eval run --backend openai` end to end against a real server: llama-cpp-python's
OpenAI-compatible server serving the embedded SmolLM2 GGUF on 127.0.0.1.

The fixture starts the server in its own process group and kills the group afterwards, whatever
happens. A second server, killed with SIGKILL mid-run, checks failover between several --base-url
(slow: 132 s at load average 8 on the shared 2-core machine: two runs, a second server's start,
and up to about 20 s of the client's retries of the dead server).
scripts/install.sh (test extra) installs the server; in CI its absence is a failure, not a skip.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from harness.models import embedded_gguf
from tests.conftest import MATH500, REPO, require_shared, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(log_path) -> tuple[subprocess.Popen, str]:
    """llama.cpp's server on a free port of 127.0.0.1 in its own process group, once it answers."""
    port = _free_port()
    # The server logs every request; a file (not an undrained pipe) keeps it from blocking on a full pipe.
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(embedded_gguf()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--model_alias",
            "smollm2-135m-instruct",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()  # the child holds its own descriptor
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return proc, base_url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            raise RuntimeError(f"llama.cpp server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python[server] is not installed; scripts/install.sh test installs it")
        pytest.skip("llama-cpp-python[server] is not installed (bash scripts/install.sh test installs it)")
    proc, base_url = _start_server(tmp_path_factory.mktemp("llama") / "server.log")
    try:
        yield base_url
    finally:
        _kill(proc)


def test_run_against_llama_cpp_server_end_to_end(tmp_path, math500, llama_server):
    result = run_cli(
        [
            "run",
            "--backend",
            "openai",
            "--base-url",
            llama_server,
            "--data",
            str(math500),
            "--limit",
            "3",
            "--turns",
            "2",
            "--max-new-tokens",
            "32",
            "--concurrency",
            "3",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "llama",
        ]
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "llama"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n"] == 3 and summary["run"]["backend"] == "openai"
    assert json.loads((run_dir / "config.json").read_text())["model"] == "smollm2-135m-instruct"
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    for sample in samples:
        assert len(sample["turns"]) == 2
        assert all(t["response"] and 0 < t["completion_tokens"] <= 32 for t in sample["turns"])


def test_server_sees_the_same_prompt_tokens_as_the_hf_engine(llama_server, embedded_checkpoint):
    # Both render the GGUF's own chat template; equal prompt token counts across several
    # multi-turn conversations show the server received the prompt the hf engine would run.
    from transformers import AutoTokenizer

    from harness.engines.base import SamplingSettings
    from harness.engines.openai import OpenAIEngine

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint)
    convs = [
        [{"role": "user", "content": "What is 2+3?"}],
        [
            {"role": "user", "content": "Solve x^2 = 4."},
            {"role": "assistant", "content": "x = 2"},
            {"role": "user", "content": "There might be an error in the solution above. Please correct it."},
        ],
    ]
    out = OpenAIEngine.from_server(llama_server).chat(convs, SamplingSettings(max_new_tokens=4))
    for conv, completions in zip(convs, out):
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert completions[0].prompt_tokens == expected


def _run_args(base_urls, out, name):
    args = ["run", "--backend", "openai"]
    for url in base_urls:
        args += ["--base-url", url]
    args += ["--data", str(require_shared(MATH500)), "--limit", "4", "--turns", "2", "--max-new-tokens", "16"]
    return [*args, "--concurrency", "1", "--output-dir", str(out), "--run-name", name]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_server_killed_mid_run_leaves_the_run_complete_and_equal_to_one_server(tmp_path, llama_server):
    """Two real servers, concurrency 1 each; the second gets SIGKILL once the first answer is in the
    journal. The run finishes; samples.jsonl has every episode once with both turns, and the same
    greedy responses as a run on one server."""
    one = run_cli(_run_args([llama_server], tmp_path, "one"))
    assert one.returncode == 0, one.stderr
    proc, second = _start_server(tmp_path / "second.log")
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        run = subprocess.Popen(
            [sys.executable, "-m", "harness", *_run_args([llama_server, second], tmp_path, "two")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        journal = tmp_path / "two" / "journal.jsonl"
        deadline = time.monotonic() + 300
        while not (journal.exists() and journal.read_text().strip()) and run.poll() is None:
            assert time.monotonic() < deadline, "no answer reached the journal"
            time.sleep(0.05)
        _kill(proc)
        _, stderr = run.communicate(timeout=300)
    finally:
        _kill(proc)
    assert run.returncode == 0, stderr
    assert f"the server at {second} stopped answering" in stderr  # it died with work in flight or to come
    records = _records(tmp_path / "two")
    assert sorted((r["id"], r["sample"]) for r in records) == sorted(
        (r["id"], r["sample"]) for r in _records(tmp_path / "one")
    )
    assert len(records) == 4 and all(len(r["turns"]) == 2 for r in records)
    responses = {r["id"]: [t["response"] for t in r["turns"]] for r in records}
    assert responses == {r["id"]: [t["response"] for t in r["turns"]] for r in _records(tmp_path / "one")}
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["engine"]["servers"] == [llama_server, second]
