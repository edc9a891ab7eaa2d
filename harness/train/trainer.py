"""`score-eval train`: SCoRe Stage I then Stage II on the harness's own two-turn episodes.

One step, top to bottom: pick prompts, roll out two-turn episodes through the engine and grade them
(`run_episodes`), build their tokens with per-attempt masks (`rollouts`), score them under the frozen
reference and the current policy (KL), compute rewards, returns and RLOO advantages (`objective`),
take one optimizer step over micro-batches, load the new weights into the rollout engine when it is
a separate one (vLLM), log a row, save when due. Everything the run writes goes under
`config.output_dir`:
    config.json       the resolved TrainConfig, task, data and versions
    train_log.csv     one row per step (state.LOG_COLUMNS)
    train_curves.png  the curves, drawn at the end
    stage1/ stage2/   plain Hugging Face checkpoints (LoRA merged) that `score-eval run --model` loads
    state/            the last resumable checkpoint (trainable weights, optimizer, position)
    evals/            `score-eval run` directories of the --eval-every evaluations
"""

from __future__ import annotations

import contextlib
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
from harness.data import ALL, Problem, load_problems
from harness.engines.base import Engine, SamplingSettings
from harness.engines.hf import HFEngine, stop_token_ids
from harness.episodes import run_episodes
from harness.errors import HarnessError
from harness.grading import Grader, get_grader
from harness.progress import Progress, SilentProgress
from harness.run import execute_run, git_commit, package_versions
from harness.store import write_json
from harness.tasks import Task, load_task
from harness.train.config import TrainConfig
from harness.train.objective import Coefficients, advantages, attempt_kl, policy_loss, token_logprobs
from harness.train.policy import Policy, load_policy, make_optimizer, save_checkpoint
from harness.train.rollouts import SequenceBatch, collate, tokenize_episode, trimmed
from harness.train.state import append_log, load_state, read_position, save_state, truncate_log

SEED_STRIDE_STAGE, SEED_STRIDE_STEP = 10_000_019, 1_009


@dataclass
class TrainResult:
    output_dir: Path
    checkpoints: dict[int, Path]
    log_path: Path
    plot_path: Path | None


@dataclass
class Rollouts:
    """What a step samples and grades with: the task, its problems and grader, the engine and settings.
    `sync` loads the policy's current weights into the engine, None when the engine runs the policy
    model itself (hf); `context` wraps generation (the policy's autocast for hf; none for vLLM, which
    runs in this thread with its own dtype handling)."""

    task: Task
    problems: list[Problem]
    grader: Grader
    engine: Engine
    settings: SamplingSettings
    stop_ids: set[int]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    sync: Callable[[], None] | None = None


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
    # Training reads a local file whole, as before tasks declared splits (MBPP's file holds every split).
    problems, source = load_problems(task, config.data, config.limit, split=ALL if config.data else None)
    if config.eval_every:
        load_problems(task, config.eval_data, config.eval_limit)  # fail now, not at the first evaluation
    if config.rollout_backend == "vllm":
        from harness.engines.vllm import import_vllm

        import_vllm()  # fail before loading the model
    out = Path(config.output_dir)
    state_dir, log_path = out / "state", out / "train_log.csv"
    position = read_position(state_dir) if resume else None
    if not resume and (log_path.exists() or (out / "config.json").exists()):
        raise HarnessError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --output-dir"
        )
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    with progress.step("loading model", None):
        policy = load_policy(config, model, tokenizer)
        if position is not None:
            load_state(policy, state_dir)
    with progress.step(f"starting the {config.rollout_backend} rollout engine", None):
        rollouts = make_rollouts(config, task, problems, policy)
    if not resume or not (out / "config.json").exists():
        write_json(
            out / "config.json",
            {
                "settings": config.as_dict(),
                "command": sys.argv,
                "started": datetime.now(timezone.utc).isoformat(),
                "task": task.as_dict(),
                "data": vars(source) | {"problems_used": len(problems)},
                "engine": rollouts.engine.describe(),
                "versions": package_versions(),
                "git_commit": git_commit(),
            },
        )
    if resume:
        truncate_log(log_path, *((position["stage"], position["step"]) if position else (0, 0)))
    coef = Coefficients(config.beta1, config.beta2, config.alpha)
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
                    row = train_step(config, stage, step, rollouts, policy, optimizer, scheduler, coef)
                    if config.eval_every and (step % config.eval_every == 0 or step == steps):
                        row.update(_evaluate(config, stage, step, rollouts, policy))
                    append_log(log_path, row)
                    if log:
                        log(row)
                    if step % config.save_every == 0 or step == steps:
                        save_state(policy, optimizer, state_dir, stage, step)
                    advance(1)
            checkpoints[stage] = save_checkpoint(policy, out / f"stage{stage}", stage, config)
            save_state(policy, None, state_dir, stage, steps)
    finally:
        rollouts.grader.close()
    plot_path = None
    with contextlib.suppress(ImportError):
        from harness.train.plots import plot_log

        plot_path = plot_log(log_path, out / "train_curves.png")
    return TrainResult(out, checkpoints, log_path, plot_path)


def make_rollouts(config: TrainConfig, task: Task, problems: list[Problem], policy: Policy) -> Rollouts:
    """The rollout engine: `hf` samples from the policy model itself; `vllm` is a second copy of the
    model in vLLM on the same GPU, which gets the policy's weights now (so a resumed run samples from
    its restored weights) and after every optimizer step."""
    max_new_tokens = config.max_new_tokens or int(task.generation.get("max_new_tokens", 512))
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=config.temperature, top_p=config.top_p)
    stop_ids = stop_token_ids(policy.model, policy.tokenizer)
    if config.rollout_backend == "hf":
        engine = HFEngine(policy.model, policy.tokenizer, policy.name, batch_size=config.rollout_batch_size)
        return Rollouts(task, problems, get_grader(task.grader), engine, settings, stop_ids, policy.autocast)
    from harness.engines.vllm import VLLMEngine

    if policy.location is None:
        raise HarnessError("--rollout-backend vllm loads the model from --model; it cannot take a model in memory")
    engine = VLLMEngine.from_model(
        policy.location,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        max_model_len=config.vllm_max_model_len,
        seed=config.seed,
        in_process=True,
        # The policy's compute dtype (bf16 autocast unless --dtype fp32); vLLM's "auto" would run a
        # float32 checkpoint in float16.
        dtype="float32" if config.dtype == "fp32" else "bfloat16",
    )
    engine.model_name = policy.name

    def sync() -> None:
        engine.load_weights(policy.merged_weights())

    sync()
    return Rollouts(task, problems, get_grader(task.grader), engine, settings, stop_ids, sync=sync)


def train_step(
    config: TrainConfig,
    stage: int,
    step: int,
    rollouts: Rollouts,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler,
    coef: Coefficients,
) -> dict:
    """One SCoRe step: rollouts, reference, advantages, update, weight sync. Returns the log row."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([config.seed, stage, step])
    problems = rollouts.problems
    n_prompts = config.batch_size // config.samples
    chosen = [problems[i] for i in rng.choice(len(problems), n_prompts, replace=len(problems) < n_prompts)]
    sampling = replace(rollouts.settings, seed=config.seed + stage * SEED_STRIDE_STAGE + step * SEED_STRIDE_STEP)
    policy.model.eval()
    with rollouts.context():
        episodes = run_episodes(
            rollouts.task,
            chosen,
            rollouts.engine,
            rollouts.grader,
            turns=2,
            samples=config.samples,
            settings=sampling,
            keep_token_ids=True,
        )
    episodes = _complete_groups(episodes, config.samples)
    render = rollouts.engine.render
    tokenized = [tokenize_episode(rollouts.task, e, render, policy.tokenizer, rollouts.stop_ids) for e in episodes]
    batch = collate(tokenized, pad_id=policy.tokenizer.pad_token_id or 0)
    r1 = torch.tensor([float(e.turns[0].correct) for e in episodes])
    r2 = torch.tensor([float(e.turns[1].correct) for e in episodes])
    t1 = time.perf_counter()

    kl1, kl2 = torch.zeros(len(episodes)), torch.zeros(len(episodes))
    with torch.no_grad():
        for start in range(0, len(batch), config.micro_batch_size):
            micro = trimmed(batch.rows(start, start + config.micro_batch_size))
            logp = _logprobs(policy, policy.model, micro)
            with policy.reference_context():
                ref_logp = _logprobs(policy, policy.reference_model(), micro)
            kl1.index_add_(0, micro.episode, attempt_kl(logp, ref_logp, micro.mask1.to(logp.device)).cpu().float())
            kl2.index_add_(0, micro.episode, attempt_kl(logp, ref_logp, micro.mask2.to(logp.device)).cpu().float())
    adv = advantages(r1, r2, kl1, kl2, stage=stage, samples=config.samples, coef=coef)
    t2 = time.perf_counter()

    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_total = 0.0
    for start in range(0, len(batch), config.micro_batch_size):
        micro = trimmed(batch.rows(start, start + config.micro_batch_size))
        logp = _logprobs(policy, policy.model, micro)
        device = logp.device
        loss = policy_loss(
            logp,
            micro.mask1.to(device),
            micro.mask2.to(device),
            adv.adv1[micro.episode].to(device),
            adv.adv2[micro.episode].to(device),
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
    if rollouts.sync is not None:
        rollouts.sync()
    t4 = time.perf_counter()
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
        "tokens_per_s": batch.tokens / (t4 - t0),
        "rollout_s": t1 - t0,
        "reference_s": t2 - t1,
        "update_s": t3 - t2,
        "sync_s": t4 - t3,
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


def _evaluate(config: TrainConfig, stage: int, step: int, rollouts: Rollouts, policy: Policy) -> dict:
    """The harness's own `score-eval run` on the held-out set, with the current weights, through the
    rollout engine."""
    run_name = f"stage{stage}-step{step:05d}"
    shutil.rmtree(Path(config.output_dir) / "evals" / run_name, ignore_errors=True)  # redone after a resume
    run_config = RunConfig(
        task=config.task,
        data=config.eval_data,
        limit=config.eval_limit,
        turns=2,
        samples=config.eval_samples,
        max_new_tokens=rollouts.settings.max_new_tokens,
        temperature=config.eval_temperature,
        seed=config.seed,
        batch_size=config.rollout_batch_size,
        output_dir=str(Path(config.output_dir) / "evals"),
        run_name=run_name,
    )
    policy.model.eval()
    with rollouts.context():
        doc = execute_run(run_config, engine=rollouts.engine).summary
    return {
        "eval_acc_t1": doc["acc_t1"],
        "eval_acc_t2": doc["acc_t2"],
        "eval_delta": doc["delta_t1_t2"],
        "eval_i2c": doc["delta_i2c_t1_t2"],
        "eval_c2i": doc["delta_c2i_t1_t2"],
    }
