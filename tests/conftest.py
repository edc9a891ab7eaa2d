"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE is set for the whole session."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MATH500 = SHARED_DATA / "math" / "math500.jsonl"


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"benchmark data {path} is absent (see ../shared/data/SOURCES.md)")
    return path


@pytest.fixture
def math500() -> Path:
    return require_shared(MATH500)


def run_cli(args: Sequence[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `score-eval ARGS` from this checkout in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args: Sequence[str], env: dict | None = None) -> subprocess.Popen:
    """Start `score-eval ARGS` from this checkout in a subprocess, for tests that act on it while it
    runs (Ctrl-C, SIGKILL); its stdout and stderr are piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class ScriptedEngine:
    """An engine that answers from a script: `responses[turn][problem_text]` or a function.

    It records every call, so tests can check batching and the conversations it was sent.
    """

    name = "scripted"
    model_name = "scripted"

    def __init__(self, reply):
        self.reply = reply  # callable(conversation) -> str
        self.calls: list[list] = []

    def chat(self, conversations, settings, on_done=None, seeds=None):
        from harness.engines.base import Completion

        self.calls.append([list(c) for c in conversations])
        self.seeds = seeds
        out = [[Completion(self.reply(c), 0, 1, "stop") for _ in range(settings.n)] for c in conversations]
        for i, completions in enumerate(out):
            if on_done:
                on_done(i, completions)
        return out

    def describe(self) -> dict:
        return {"backend": self.name}


@pytest.fixture(scope="session")
def varied_engine(tiny_model_dir):
    """The hf engine on the tiny Llama re-drawn with larger weights (initializer_range 0.2): with
    the default 0.02 it answers every prompt with the same repeated token, which would make order
    and identity checks vacuous; this one's greedy tokens differ from prompt to prompt and step to
    step. Batch size 8; tests that change the engine put it back."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from harness.engines.hf import HFEngine

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return HFEngine(model, AutoTokenizer.from_pretrained(tiny_model_dir), "tiny-varied", batch_size=8)


@pytest.fixture(scope="session")
def embedded_checkpoint() -> Path:
    """The embedded SmolLM2 model as a cached safetensors checkpoint (converted once per machine)."""
    from harness.models import resolve_model

    return Path(resolve_model(None)[1])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_checkpoint) -> Path:
    """A 2-layer Llama with random weights and the embedded tokenizer: fast, real code paths."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


STAND_INS = Path(__file__).parent / "stand_ins"


@pytest.fixture
def stand_in_vllm(monkeypatch):
    """`import vllm` gives tests/stand_ins/vllm (transformers behind vLLM's API) for this test."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    sys.modules.pop("vllm", None)
    module = importlib.import_module("vllm")
    module.CALLS.clear()
    module.INSTANCES.clear()
    yield module
    sys.modules.pop("vllm", None)
