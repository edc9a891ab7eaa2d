"""`score-eval run --backend openai` end to end against a real server: llama-cpp-python's
OpenAI-compatible server serving the embedded SmolLM2 GGUF on 127.0.0.1.

The fixture starts the server in its own process group and kills the group afterwards, whatever
happens. scripts/install.sh (test extra) installs the server; in CI its absence is a failure, not a
skip.
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
from tests.conftest import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python[server] is not installed; scripts/install.sh test installs it")
        pytest.skip("llama-cpp-python[server] is not installed (bash scripts/install.sh test installs it)")
    port = _free_port()
    # The server logs every request; a file (not an undrained pipe) keeps it from blocking on a full pipe.
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
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
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama.cpp server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


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
