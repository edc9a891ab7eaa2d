"""Resolving --model: the embedded default, local checkpoints, .gguf files, and bad paths."""

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.models import DEFAULT_MODEL_NAME, resolve_model


def test_default_is_the_embedded_model_cached_as_safetensors(embedded_checkpoint):
    name, location = resolve_model(None)
    assert name == DEFAULT_MODEL_NAME
    assert Path(location) == embedded_checkpoint
    assert (embedded_checkpoint / "model.safetensors").is_file()
    assert (embedded_checkpoint / "tokenizer.json").is_file()


def test_checkpoint_directory_is_used_as_it_is(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == (str(tiny_model_dir), str(tiny_model_dir.resolve()))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "nope", "does not exist"),
        (lambda tmp: tmp / "missing.gguf", "does not exist"),
        (lambda tmp: tmp, "holds no config.json"),
    ],
)
def test_bad_model_paths_fail_with_one_line(tmp_path, make, message):
    with pytest.raises(HarnessError, match=message):
        resolve_model(str(make(tmp_path)))


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError, match="cannot reach the Hugging Face hub.*--model"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
