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


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_a_gguf_file_that_cannot_be_read_is_one_line(tmp_path, monkeypatch, kind):
    from harness.models import embedded_gguf

    monkeypatch.setenv("SCORE_EVAL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / f"{kind}.gguf"
    # A cut-off download: the header and the first tensors of the embedded model, not the rest.
    path.write_bytes(b"not a model at all" * 20 if kind == "garbage" else embedded_gguf().read_bytes()[:3_000_000])
    with pytest.raises(HarnessError) as info:
        resolve_model(str(path))
    message = str(info.value)
    assert message.startswith(f"model file {path} is not a readable GGUF file (") and "\n" not in message
    assert message.endswith("check the file (a download cut short?) or pass another --model")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("config.json"))


def test_loading_a_model_draws_no_loading_weights_bar(tiny_model_dir, capfd):
    from harness.engines.hf import HFEngine

    HFEngine.from_model(str(tiny_model_dir))
    assert "Loading weights" not in capfd.readouterr().err
