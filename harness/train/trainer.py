"""`score-eval train`: SCoRe Stage I then Stage II on the harness's own two-turn episodes.

One step, top to bottom: pick prompts, roll out two-turn episodes through the engine and grade them
(`run_episodes`), rebuild their tokens with per-attempt masks, score them under the frozen reference
and the current policy (KL), compute rewards, returns and RLOO advantages (`objective`), take one
optimizer step over micro-batches, log a row, save when due. Everything the run writes goes under
`config.output_dir`:
    config.json       the resolved TrainConfig, task, data and versions
    train_log.csv     one row per step (LOG_COLUMNS)
    train_curves.png  the curves, drawn at the end
    stage1/ stage2/   plain Hugging Face checkpoints (LoRA merged) that `score-eval run --model` loads
    state/            the last resumable checkpoint (trainable weights, optimizer, position)
    evals/            `score-eval run` directories of the --eval-every evaluations
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from harness.config import RunConfig
from harness.data import load_problems
from harness.engines.base import SamplingSettings
from harness.engines.hf import HFEngine, stop_token_ids
from harness.episodes import run_episodes
from harness.errors import HarnessError
from harness.grading import get_grader
from harness.progress import Progress, SilentProgress
from harness.run import execute_run, git_commit, package_versions
from harness.store import write_json
from harness.tasks import load_task
from harness.train.config import TrainConfig
from harness.train.objective import Coefficients, advantages, attempt_kl, policy_loss, token_logprobs
from harness.train.rollouts import SequenceBatch, collate, tokenize_episode, trimmed

LOG_COLUMNS = (
    "stage",
    "step",
    "reward_t1",
    "reward_t2",
    "delta",
    "i2c",
    "c2i",
    "kl_t1",
    "kl_t2",
    "loss",
    "lr",
    "tokens_per_s",
    "rollout_s",
    "reference_s",
    "update_s",
    "eval_acc_t1",
    "eval_acc_t2",
    "eval_delta",
    "eval_i2c",
    "eval_c2i",
)
SEED_STRIDE_STAGE, SEED_STRIDE_STEP = 10_000_019, 1_009


@dataclass
class TrainResult:
    output_dir: Path
    checkpoints: dict[int, Path]
    log_path: Path
    plot_path: Path | None


@dataclass
class Policy:
    """The trained model, its tokenizer, and how to score under the frozen reference."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    reference: torch.nn.Module | None  # a frozen copy (full fine-tuning); None for LoRA (adapter disabled)
    lora: bool
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]

    def reference_context(self) -> contextlib.AbstractContextManager:
        return self.model.disable_adapter() if self.lora else contextlib.nullcontext()

    def reference_model(self) -> torch.nn.Module:
        return self.model if self.lora else self.reference


def train(
    config: TrainConfig,
    progress: Progress | None = None,
    log: Callable[[dict], None] | None = None,
    *,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    resume: bool = False,
) -> TrainResult:
    """Run the configured stage(s). `model`/`tokenizer` may be given in memory (tests) instead of --model."""
    progress = progress or SilentProgress()
    config.validate()
    task = load_task(config.task)
    grader = get_grader(task.grader)
    problems, source = load_problems(task, config.data, config.limit)
    if config.eval_every:
        load_problems(task, config.eval_data, config.eval_limit)  # fail now, not at the first evaluation
    out = Path(config.output_dir)
    state_dir, log_path = out / "state", out / "train_log.csv"
    position = _read_position(state_dir) if resume else None
    if not resume and (log_path.exists() or (out / "config.json").exists()):
        raise HarnessError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --output-dir"
        )
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    with progress.step("loading model", None):
        policy = load_policy(config, model, tokenizer)
    engine = HFEngine(policy.model, policy.tokenizer, policy.name, batch_size=config.rollout_batch_size)
    if not resume or not (out / "config.json").exists():
        write_json(
            out / "config.json",
            {
                "settings": config.as_dict(),
                "command": sys.argv,
                "started": datetime.now(timezone.utc).isoformat(),
                "task": task.as_dict(),
                "data": vars(source) | {"problems_used": len(problems)},
                "engine": engine.describe(),
                "versions": package_versions(),
                "git_commit": git_commit(),
            },
        )
    if position is not None:
        _load_state(policy, state_dir)
    if resume:
        _truncate_log(log_path, *((position["stage"], position["step"]) if position else (0, 0)))
    max_new_tokens = config.max_new_tokens or int(task.generation.get("max_new_tokens", 512))
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=config.temperature, top_p=config.top_p)
    coef = Coefficients(config.beta1, config.beta2, config.alpha)
    stop_ids = stop_token_ids(policy.model, policy.tokenizer)
    checkpoints: dict[int, Path] = {}

    try:
        for stage in config.stages:
            steps = config.steps(stage)
            done = 0
            if position is not None and position["stage"] > stage:
                checkpoints[stage] = out / f"stage{stage}"
                continue
            if position is not None and position["stage"] == stage:
                done = position["step"]
            optimizer, scheduler = make_optimizer(config, policy.model)
            if position is not None and position["stage"] == stage and done < steps:
                optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", map_location=policy.device))
                scheduler.last_epoch = done
            with progress.step(f"Stage {'I' if stage == 1 else 'II'}", steps) as advance:
                advance(done)
                for step in range(done + 1, steps + 1):
                    row = train_step(
                        config,
                        stage,
                        step,
                        task,
                        grader,
                        problems,
                        engine,
                        policy,
                        optimizer,
                        scheduler,
                        settings,
                        coef,
                        stop_ids,
                    )
                    if config.eval_every and (step % config.eval_every == 0 or step == steps):
                        row.update(_evaluate(config, stage, step, engine, policy, max_new_tokens))
                    _append_log(log_path, row)
                    if log:
                        log(row)
                    if step % config.save_every == 0 or step == steps:
                        _save_state(policy, optimizer, state_dir, stage, step)
                    advance(1)
            checkpoints[stage] = _save_checkpoint(policy, out / f"stage{stage}", stage, config)
            _save_state(policy, None, state_dir, stage, steps)
    finally:
        grader.close()
    plot_path = None
    with contextlib.suppress(ImportError):
        from harness.train.plots import plot_log

        plot_path = plot_log(log_path, out / "train_curves.png")
    return TrainResult(out, checkpoints, log_path, plot_path)


def train_step(
    config, stage, step, task, grader, problems, engine, policy, optimizer, scheduler, settings, coef, stop_ids
) -> dict:
    """One SCoRe step: rollouts, reference, advantages, update. Returns the log row."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([config.seed, stage, step])
    n_prompts = config.batch_size // config.samples
    chosen = [problems[i] for i in rng.choice(len(problems), n_prompts, replace=len(problems) < n_prompts)]
    sampling = replace(settings, seed=config.seed + stage * SEED_STRIDE_STAGE + step * SEED_STRIDE_STEP)
    policy.model.eval()
    with policy.autocast():
        episodes = run_episodes(task, chosen, engine, grader, turns=2, samples=config.samples, settings=sampling)
    episodes = _complete_groups(episodes, config.samples)
    tokenized = [tokenize_episode(task, e, engine.render, policy.tokenizer, stop_ids) for e in episodes]
    batch = collate(tokenized, pad_id=policy.tokenizer.pad_token_id or 0)
    r1 = torch.tensor([float(e.turns[0].correct) for e in episodes])
    r2 = torch.tensor([float(e.turns[1].correct) for e in episodes])
    t1 = time.perf_counter()

    kl1, kl2 = [], []
    with torch.no_grad():
        for start in range(0, len(episodes), config.micro_batch_size):
            micro = trimmed(batch.rows(start, start + config.micro_batch_size))
            logp = _logprobs(policy, policy.model, micro)
            with policy.reference_context():
                ref_logp = _logprobs(policy, policy.reference_model(), micro)
            kl1.append(attempt_kl(logp, ref_logp, micro.mask1.to(logp.device)).cpu())
            kl2.append(attempt_kl(logp, ref_logp, micro.mask2.to(logp.device)).cpu())
    adv = advantages(r1, r2, torch.cat(kl1), torch.cat(kl2), stage=stage, samples=config.samples, coef=coef)
    t2 = time.perf_counter()

    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_total = 0.0
    for start in range(0, len(episodes), config.micro_batch_size):
        stop = start + config.micro_batch_size
        micro = trimmed(batch.rows(start, stop))
        logp = _logprobs(policy, policy.model, micro)
        device = logp.device
        loss = policy_loss(
            logp,
            micro.mask1.to(device),
            micro.mask2.to(device),
            adv.adv1[start:stop].to(device),
            adv.adv2[start:stop].to(device),
            len(episodes),
        )
        loss.backward()
        loss_total += float(loss.detach())
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in policy.model.parameters() if p.requires_grad], config.max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    t3 = time.perf_counter()
    return {
        "stage": stage,
        "step": step,
        "reward_t1": float(r1.mean()),
        "reward_t2": float(r2.mean()),
        "delta": float((r2 - r1).mean()),
        "i2c": float(((1 - r1) * r2).mean()),
        "c2i": float((r1 * (1 - r2)).mean()),
        "kl_t1": float(adv.kl1.mean()),
        "kl_t2": float(adv.kl2.mean()),
        "loss": loss_total,
        "lr": lr,
        "tokens_per_s": batch.tokens / (t3 - t0),
        "rollout_s": t1 - t0,
        "reference_s": t2 - t1,
        "update_s": t3 - t2,
    }


def _complete_groups(episodes: list, samples: int) -> list:
    """Drop every prompt whose k episodes are not all two-turn (a prompt outgrew the context), so the
    RLOO groups stay whole."""
    groups = [episodes[i : i + samples] for i in range(0, len(episodes), samples)]
    kept = [e for g in groups if all(e.skipped is None and len(e.turns) == 2 for e in g) for e in g]
    if not kept:
        raise HarnessError(
            "every prompt of this step outgrew the model's context at turn 2; lower --max-new-tokens "
            "or use a model with a longer context"
        )
    return kept


def _logprobs(policy: Policy, model: torch.nn.Module, micro: SequenceBatch) -> torch.Tensor:
    ids = micro.input_ids.to(policy.device)
    with policy.autocast():
        logits = model(input_ids=ids, attention_mask=micro.attention_mask.to(policy.device), use_cache=False).logits
    return token_logprobs(logits, ids)


def _evaluate(
    config: TrainConfig, stage: int, step: int, engine: HFEngine, policy: Policy, max_new_tokens: int
) -> dict:
    """The harness's own `score-eval run` on the held-out set, with the current weights."""
    run_name = f"stage{stage}-step{step:05d}"
    shutil.rmtree(Path(config.output_dir) / "evals" / run_name, ignore_errors=True)  # redone after a resume
    run_config = RunConfig(
        task=config.task,
        data=config.eval_data,
        limit=config.eval_limit,
        turns=2,
        samples=config.eval_samples,
        max_new_tokens=max_new_tokens,
        temperature=config.eval_temperature,
        seed=config.seed,
        batch_size=config.rollout_batch_size,
        output_dir=str(Path(config.output_dir) / "evals"),
        run_name=run_name,
    )
    policy.model.eval()
    with policy.autocast():
        doc = execute_run(run_config, engine=engine).summary
    return {
        "eval_acc_t1": doc["acc_t1"],
        "eval_acc_t2": doc["acc_t2"],
        "eval_delta": doc["delta_t1_t2"],
        "eval_i2c": doc["delta_i2c_t1_t2"],
        "eval_c2i": doc["delta_c2i_t1_t2"],
    }


def load_policy(config: TrainConfig, model, tokenizer) -> Policy:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if on_gpu and config.dtype != "fp32":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    if model is None:
        from harness.models import resolve_model

        name, location = resolve_model(config.model)
        # Full fine-tuning keeps fp32 master weights (a 5e-6 step is below bf16's resolution); a frozen
        # LoRA base, or --dtype bf16, is stored in bf16 on the GPU.
        bf16 = on_gpu and (config.dtype == "bf16" or (config.dtype == "auto" and config.lora_r > 0))
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.bfloat16 if bf16 else torch.float32)
    else:
        name = config.model or "in-memory"
    model.to(device)
    reference = None
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                task_type="CAUSAL_LM",
                target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            ),
        )
    else:
        reference = copy.deepcopy(model).eval()
        if on_gpu:
            reference.to(torch.bfloat16)
        reference.requires_grad_(False)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Policy(model, tokenizer, name, reference, config.lora_r > 0, device, autocast)


def make_optimizer(config: TrainConfig, model: torch.nn.Module):
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return optimizer, scheduler


def _save_checkpoint(policy: Policy, path: Path, stage: int, config: TrainConfig) -> Path:
    """A plain Hugging Face checkpoint (LoRA merged into the weights), written then renamed into place."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model = copy.deepcopy(policy.model).merge_and_unload() if policy.lora else policy.model
    model.save_pretrained(partial)
    policy.tokenizer.save_pretrained(partial)
    info = {"stage": stage, "steps": config.steps(stage), "settings": config.as_dict()}
    write_json(partial / "score_train.json", info)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _save_state(policy: Policy, optimizer, state_dir: Path, stage: int, step: int) -> None:
    """Trainable weights, optimizer state and position; position.json is written last, so it names a whole state."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "position.json").unlink(missing_ok=True)
    torch.save(_trainable(policy.model), state_dir / "trainable.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
    write_json(state_dir / "position.json", {"stage": stage, "step": step})


def _read_position(state_dir: Path) -> dict | None:
    path = state_dir / "position.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _load_state(policy: Policy, state_dir: Path) -> None:
    saved = torch.load(state_dir / "trainable.pt", map_location=policy.device)
    params = dict(policy.model.named_parameters())
    missing = set(_trainable(policy.model)) - set(saved)
    if missing or any(name not in params for name in saved):
        raise HarnessError(f"{state_dir} was saved by a different model or LoRA setting; resume with the same settings")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _truncate_log(path: Path, stage: int, step: int) -> None:
    """Drop the rows of steps after the checkpoint we resume from; they are redone."""
    if not path.exists():
        return
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (int(r["stage"]), int(r["step"])) <= (stage, step)]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_log(path: Path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))
