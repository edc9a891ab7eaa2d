"""TrainConfig: every setting of `score-eval train`, with the paper's defaults and named presets.

A setting is resolved in this order, each overriding the one before: the dataclass default (the
paper's MATH setting, SCoRe arXiv 2409.12917 v2 Table 8), a named preset, a config file (YAML or TOML,
e.g. configs/train/one-gpu.yaml), then options given on the command line. The resolved config is
saved as DIR/config.json with the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import click
import yaml

from harness.config import DTYPES
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parent.parent.parent
# The same names as `score-eval run --dtype`; the trainer's old spellings are still accepted.
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SMOKE_DATA = REPO / "configs" / "train" / "smoke-math.jsonl"


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # What to train on
    model: str | None = _f(None, "starting checkpoint (dir, .gguf, hub id); default: embedded SmolLM2-135M-Instruct")
    reference: str | None = _f(
        None,
        "frozen reference model of the KL (dir, .gguf, hub id); default: the starting model. Name the base "
        "model when --model is a Stage I checkpoint (--stage 2)",
    )
    task: str = _f("math", "task name (a file in tasks/) or path to a task .yaml")
    data: str | None = _f(
        None, "training problems (.jsonl/.json/.parquet); default: the train split of a generated task (arithmetic)"
    )
    split: str | None = _f(
        None,
        "split of the training data: default 'train' where the task declares one (MBPP's file holds every "
        "split; a generated task makes one), else the whole file; 'all' takes every record",
    )
    limit: int | None = _f(None, "use only the first N training problems")
    output_dir: str = _f("runs/score", "everything the run writes: stage1/, stage2/, train_log.csv, config.json, plot")
    stage: str = _f("both", "which stage(s) to run: 1, 2 or both (Stage II starts from Stage I's weights)")
    rounds: int = _f(
        1,
        "repeat Stage I then Stage II this many times (the paper's interleaved outer loop); with more than "
        "one, best/ keeps the Stage II checkpoint of the round with the highest training reward",
    )
    # SCoRe objective (Table 8)
    beta1: float = _f(0.01, "β1: KL penalty on every attempt (Stage II), and on attempt 2 in Stage I")
    beta2: float = _f(0.1, "β2: strong KL on attempt 1 in Stage I (paper: 0.1 MATH, 0.25 MBPP)")
    alpha: float = _f(10.0, "α: Stage II reward-shaping bonus α(r2 − r1) on attempt 2")
    stage1_steps: int = _f(1500, "optimizer steps of Stage I")
    stage2_steps: int = _f(1500, "optimizer steps of Stage II")
    # Batch and rollouts
    batch_size: int = _f(512, "episodes per optimizer step (prompts x samples)")
    samples: int = _f(4, "episodes per prompt; the RLOO baseline of one is the mean return of the others")
    micro_batch_size: int = _f(8, "sequences per forward/backward; gradient accumulation covers the rest")
    rollout_batch_size: int = _f(64, "conversations per generation batch in the engine")
    rollout_backend: str = _f(
        "hf",
        "engine for rollouts: hf (the policy model itself), vllm (a vLLM copy, weights loaded after each step) "
        "or llamacpp (the embedded model's float32 GGUF on CPU, weights written into it after each step)",
    )
    vllm_gpu_memory_utilization: float = _f(
        0.3, "share of GPU memory the vllm rollout engine may take (the rest is the trainer's)"
    )
    vllm_max_model_len: int | None = _f(None, "context length of the vllm rollout engine; default: the model's")
    temperature: float = _f(1.0, "sampling temperature of rollouts; the loss and KL score softmax(logits / T)")
    top_p: float = _f(1.0, "nucleus mass of rollouts: only 1 (the loss scores the full distribution)")
    max_new_tokens: int | None = _f(None, "per attempt; default: the task's")
    # Optimisation
    optimizer: str = _f("adam", "adam or adamw")
    lr: float = _f(5e-6, "learning rate (paper: 5e-6 MATH, 1e-5 MBPP)")
    weight_decay: float = _f(0.0, "decoupled weight decay (adamw only)")
    warmup_steps: int = _f(0, "linear learning-rate warm-up, in steps, at the start of each stage")
    max_grad_norm: float | None = _f(1.0, "clip the gradient norm to this (none: no clipping)")
    # Memory and precision
    lora_r: int = _f(0, "LoRA rank; 0 = full fine-tuning")
    lora_alpha: int = _f(32, "LoRA scaling numerator")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_target_modules: str = _f("all-linear", "comma-separated module names, or all-linear")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass to save memory")
    dtype: str = _f(
        "auto",
        "compute dtype: bfloat16 (autocast over float32 master weights; a LoRA base stored in bfloat16), "
        "float32, or auto (bfloat16 on CUDA, float32 on CPU); float16 is refused (no loss scaling)",
    )
    device: str | None = _f(None, "cuda or cpu; default: cuda when available")
    # Bookkeeping
    seed: int = _f(0, "seed of prompt order, sampling and initialisation")
    save_every: int = _f(100, "write a resumable checkpoint every N steps (and at the end of each stage)")
    eval_every: int = _f(0, "every N steps run `score-eval run` on --eval-data (0: never)")
    eval_data: str | None = _f(None, "held-out problems for --eval-every; default: a generated task's test split")
    eval_limit: int | None = _f(None, "use only the first N held-out problems")
    eval_samples: int = _f(1, "episodes per held-out problem")
    eval_temperature: float = _f(0.0, "sampling temperature of evaluations (0 = greedy, as in the paper)")
    preset: str | None = _f(None, "named preset the config started from (math, mbpp, one-gpu, smoke)")

    def __post_init__(self) -> None:
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)

    def validate(self) -> TrainConfig:
        checks = [
            (self.stage in ("1", "2", "both"), f"--stage must be 1, 2 or both (got {self.stage})"),
            (self.samples >= 2, f"--samples must be at least 2 for the RLOO baseline (got {self.samples})"),
            (
                self.batch_size % self.samples == 0,
                f"--batch-size ({self.batch_size}) must be a multiple of --samples ({self.samples})",
            ),
            (self.micro_batch_size >= 1 and self.rollout_batch_size >= 1, "batch sizes must be at least 1"),
            (self.stage1_steps >= 0 and self.stage2_steps >= 0, "step counts must not be negative"),
            (self.lr > 0, f"--lr must be positive (got {self.lr})"),
            (self.temperature > 0, "--temperature must be positive: REINFORCE needs sampled rollouts"),
            (
                self.top_p == 1,
                f"--top-p {self.top_p} is not supported in training: the loss and KL score the full distribution "
                "at --temperature, so nucleus-sampled rollouts would bias the gradient; leave --top-p at 1",
            ),
            (self.rounds >= 1, f"--rounds must be at least 1 (got {self.rounds})"),
            (
                self.rounds == 1 or self.stage == "both",
                "--rounds above 1 interleaves Stage I and Stage II; it needs --stage both",
            ),
            (self.optimizer in ("adam", "adamw"), f"--optimizer must be adam or adamw (got {self.optimizer})"),
            (
                self.dtype != "float16",
                "--dtype float16 needs loss scaling, which the trainer does not do; use bfloat16 or float32",
            ),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype})"),
            (self.lora_r >= 0, "--lora-r must not be negative"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.eval_every >= 0, "--eval-every must not be negative"),
            (
                self.rollout_backend != "llamacpp" or self.model is None,
                "--rollout-backend llamacpp trains the embedded default model only (the policy's weights are "
                "written into its float32 GGUF after every step); leave out --model, or use hf or vllm",
            ),
            (
                self.rollout_backend in ("hf", "vllm", "llamacpp"),
                f"--rollout-backend must be hf, vllm or llamacpp (got {self.rollout_backend})",
            ),
            (
                0 < self.vllm_gpu_memory_utilization < 1,
                f"--vllm-gpu-memory-utilization must be in (0, 1) (got {self.vllm_gpu_memory_utilization})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise HarnessError(message)
        return self

    @property
    def stages(self) -> list[int]:
        return {"1": [1], "2": [2], "both": [1, 2]}[self.stage]

    def steps(self, stage: int) -> int:
        return self.stage1_steps if stage == 1 else self.stage2_steps

    def as_dict(self) -> dict:
        return asdict(self)


# Presets change only what differs from the defaults (the paper's MATH setting).
PRESETS: dict[str, dict[str, Any]] = {
    # SCoRe Table 8, MATH: Adam, lr 5e-6, batch 512, 3000 steps, temperature 1.0, β2 = 0.1. The table
    # gives no split of the steps between the stages; we split them evenly.
    "math": {},
    # SCoRe Table 8, MBPP: lr 1e-5, batch 128, 1500 steps, β2 = 0.25.
    "mbpp": {"task": "mbpp", "lr": 1e-5, "batch_size": 128, "stage1_steps": 750, "stage2_steps": 750, "beta2": 0.25},
    # One 80 GB GPU, a 0.5B-1.5B model: full fine-tuning with fp32 master weights under bf16 autocast,
    # gradient checkpointing, 64 episodes a step in micro-batches of 8.
    "one-gpu": {
        "batch_size": 64,
        "micro_batch_size": 8,
        "rollout_batch_size": 64,
        "max_new_tokens": 768,
        "gradient_checkpointing": True,
        "stage1_steps": 300,
        "stage2_steps": 300,
        "save_every": 50,
    },
    # A few steps of each stage on the embedded SmolLM2 model on CPU, on a tiny bundled problem set.
    "smoke": {
        "data": str(SMOKE_DATA),
        "batch_size": 4,
        "samples": 2,
        "micro_batch_size": 4,
        "rollout_batch_size": 4,
        "max_new_tokens": 32,
        "stage1_steps": 2,
        "stage2_steps": 2,
        "lr": 1e-5,
        "lora_r": 8,
        "save_every": 1,
        "output_dir": "runs/smoke",
    },
}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML or TOML file; keys are TrainConfig field names (dashes allowed)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"config file {path} does not exist")
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(path.read_text()) or {}
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
            raw = raw.get("settings", raw)  # a run's own config.json
        else:
            raise HarnessError(f"config file {path} must be .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, ValueError) as exc:
        raise HarnessError(f"config file {path} could not be parsed ({exc})") from exc
    if not isinstance(raw, dict):
        raise HarnessError(f"config file {path} must hold a mapping of setting names to values")
    return {k.replace("-", "_"): v for k, v in raw.items()}


def resolve_config(
    preset: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults < preset < config file < explicit overrides (None values in overrides are ignored)."""
    from_file = read_config_file(config_file) if config_file else {}
    preset = preset or from_file.pop("preset", None)
    from_file.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise HarnessError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    settings: dict[str, Any] = {**PRESETS.get(preset or "", {}), **from_file}
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(settings) - known)
    if unknown:
        raise HarnessError(f"unknown setting(s) {', '.join(unknown)}; see `score-eval train --help`")
    if "stage" in settings:
        settings["stage"] = str(settings["stage"])
    return replace(TrainConfig(), preset=preset, **settings)


_CLICK_TYPES = {"str": str, "int": int, "float": float}


def click_options(command):
    """Add one command-line option per TrainConfig field (default None: "not given", so a preset or
    config file keeps its value), with the field's help text and its default where it has one."""
    for f in reversed(fields(TrainConfig)):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        base = str(f.type).replace(" | None", "")
        text = f.metadata["help"] + ("" if f.default is None else f" [default: {f.default}]")
        if base == "bool":
            option = click.option(f"{flag}/--no-{flag[2:]}", default=None, help=text)
        elif f.name == "dtype":
            option = click.option(flag, type=DtypeChoice(), default=None, help=text)
        else:
            option = click.option(flag, type=_CLICK_TYPES[base], default=None, help=text)
        command = option(command)
    return command


class DtypeChoice(click.Choice):
    """`run`'s dtype names; the trainer's old bf16/fp16/fp32 are accepted and mean the same."""

    def __init__(self) -> None:
        super().__init__(DTYPES)

    def convert(self, value, param, ctx):
        return super().convert(DTYPE_ALIASES.get(value, value), param, ctx)


def config_from_cli(
    preset: str | None, config_file: str | None, smoke: bool, resume: bool, overrides: dict[str, Any]
) -> TrainConfig:
    """`--smoke` is the smoke preset; `--resume` without --config continues from DIR/config.json."""
    if smoke:
        preset = preset or "smoke"
    if resume and config_file is None:
        preset_dir = PRESETS.get(preset or "", {}).get("output_dir")
        output_dir = overrides.get("output_dir") or preset_dir or TrainConfig.output_dir
        saved = Path(output_dir) / "config.json"
        if saved.is_file():
            config_file = str(saved)
    return resolve_config(preset, config_file, overrides)
