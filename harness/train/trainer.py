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
    best/             with --rounds > 1: the Stage II checkpoint of the round with the best training reward
    state/            the last resumable checkpoint (trainable weights, optimizer, position)
    evals/            `score-eval run` directories of the --eval-every evaluations
"""

from __future__ import annotations

import contextlib
import json
import math
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
from harness.data import ALL, DataSource, Problem, load_problems, split_names
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
from harness.train.logprobs import model_logprobs
from harness.train.objective import Coefficients, advantages, attempt_kl, policy_loss
from harness.train.policy import Policy, checkpoint_sampling_off, load_policy, make_optimizer, save_checkpoint
from harness.train.rollouts import SequenceBatch, by_length, collate, tokenize_episode, trimmed
from harness.train.state import append_log, load_state, read_log, read_position, save_state, truncate_log

SEED_STRIDE_ROUND, SEED_STRIDE_STAGE, SEED_STRIDE_STEP = 100_000_007, 10_000_019, 1_009


@dataclass
class TrainResult:
    output_dir: Path
    checkpoints: dict[int, Path]
    log_path: Path
    plot_path: Path | None
    best: Path | None = None  # --rounds > 1: the Stage II checkpoint with the best training reward


@dataclass
class Rollouts:
    """What a step samples and grades with: the task, its problems and grader, the engine and settings.
    `sync` loads the policy's current weights into the engine, None when the engine runs the policy
    model itself (hf); `context` wraps generation (the policy's autocast for hf; none for vLLM, which
    runs in this thread with its own dtype handling), and `sampling` wraps the training rollouts (for
    hf, also with the checkpoint's own sampling settings switched off)."""

    task: Task
    problems: list[Problem]
    grader: Grader
    engine: Engine
    settings: SamplingSettings
    stop_ids: set[int]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    sampling: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
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
    if task.data.generator is None and config.data is None:
        raise HarnessError("pass --data with training problems (e.g. a MATH train.jsonl), or use --smoke")
    if task.data.generator is None and config.eval_every and config.eval_data is None:
        raise HarnessError("--eval-every needs --eval-data (held-out problems)")
    problems, source = training_problems(task, config)
    if config.eval_every:
        load_problems(task, config.eval_data, config.eval_limit)  # fail now, not at the first evaluation
    if config.rollout_backend == "vllm":
        from harness.engines.vllm import import_vllm

        import_vllm()  # fail before loading the model
    if config.rollout_backend == "llamacpp":
        from harness.engines.llamacpp import import_llama_cpp

        import_llama_cpp()  # fail before loading the model
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
    # Where the run stands: (round, stage, step) of the last saved state; (1, 0, 0) before any.
    reached = (position.get("round", 1), position["stage"], position["step"]) if position else (1, 0, 0)
    if resume:
        truncate_log(log_path, *reached)
    coef = Coefficients(config.beta1, config.beta2, config.alpha)
    checkpoints: dict[int, Path] = {}

    try:
        for round_no in range(1, config.rounds + 1):
            for stage in config.stages:
                steps = config.steps(stage)
                if reached[:2] > (round_no, stage):
                    checkpoints[stage] = out / f"stage{stage}"
                    continue
                done = reached[2] if reached[:2] == (round_no, stage) else 0
                optimizer, scheduler = make_optimizer(config, policy.model)
                if 0 < done < steps:
                    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", map_location=policy.device))
                    scheduler.last_epoch = done
                label = f"Stage {'I' if stage == 1 else 'II'}" + (f", round {round_no}" if config.rounds > 1 else "")
                with progress.step(label, steps) as advance:
                    advance(done)
                    for step in range(done + 1, steps + 1):
                        row = train_step(config, stage, step, rollouts, policy, optimizer, scheduler, coef, round_no)
                        if config.eval_every and (step % config.eval_every == 0 or step == steps):
                            row.update(_evaluate(config, round_no, stage, step, rollouts, policy))
                        append_log(log_path, row)
                        if log:
                            log(row)
                        if step % config.save_every == 0 or step == steps:
                            save_state(policy, optimizer, state_dir, round_no, stage, step)
                        advance(1)
                checkpoints[stage] = save_checkpoint(policy, out / f"stage{stage}", stage, config)
                if config.rounds > 1 and stage == 2:
                    _keep_best(out, log_path, round_no)
                save_state(policy, None, state_dir, round_no, stage, steps)
    finally:
        rollouts.grader.close()
    best = out / "best" if config.rounds > 1 else None
    plot_path = None
    with contextlib.suppress(ImportError):
        from harness.train.plots import plot_log

        plot_path = plot_log(log_path, out / "train_curves.png")
    return TrainResult(out, checkpoints, log_path, plot_path, best)


def training_problems(task: Task, config: TrainConfig) -> tuple[list[Problem], DataSource]:
    """The problems to train on: by default the task's "train" split where it has one, never the
    held-out split that `score-eval run` evaluates (MBPP's local file holds every split; a generated
    task makes a train split that skips every held-out problem); else the whole file."""
    split = config.split or ("train" if "train" in split_names(task) else ALL)
    return load_problems(task, config.data, config.limit, split=split)


def round_reward(rows: list[dict], round_no: int) -> float:
    """A round's training reward: the mean second-attempt reward r2 over its Stage II steps (the
    accuracy the method is after, on the training batches, averaged so one lucky batch does not decide)."""
    values = [float(r["reward_t2"]) for r in rows if int(r.get("round") or 1) == round_no and r["stage"] == "2"]
    return sum(values) / len(values)


def _keep_best(out: Path, log_path: Path, round_no: int) -> None:
    """Copy stage2/ to best/ when this round's training reward beats the best kept so far (ties keep the
    earlier round). best/score_train.json records the round and its reward, so a resumed run compares
    against it."""
    reward = round_reward(read_log(log_path), round_no)
    best, record = out / "best", out / "best" / "score_train.json"
    if record.is_file() and json.loads(record.read_text()).get("round_reward", -math.inf) >= reward:
        return
    partial = out / "best.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(out / "stage2", partial)
    info = json.loads((partial / "score_train.json").read_text()) | {"round": round_no, "round_reward": reward}
    write_json(partial / "score_train.json", info)
    shutil.rmtree(best, ignore_errors=True)
    partial.rename(best)


def make_rollouts(config: TrainConfig, task: Task, problems: list[Problem], policy: Policy) -> Rollouts:
    """The rollout engine: `hf` samples from the policy model itself; `vllm` is a second copy of the
    model in vLLM on the same GPU, and `llamacpp` a float32 GGUF copy of the embedded model on the CPU;
    each of those gets the policy's weights now (so a resumed run samples from its restored weights)
    and after every optimizer step."""
    max_new_tokens = config.max_new_tokens or int(task.generation.get("max_new_tokens", 512))
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=config.temperature, top_p=config.top_p)
    stop_ids = stop_token_ids(policy.model, policy.tokenizer)
    if config.rollout_backend == "hf":
        engine = HFEngine(policy.model, policy.tokenizer, policy.name, batch_size=config.rollout_batch_size)

        @contextlib.contextmanager
        def sampling():
            with policy.autocast(), checkpoint_sampling_off(policy.model):
                yield

        return Rollouts(task, problems, get_grader(task.grader), engine, settings, stop_ids, policy.autocast, sampling)
    if config.rollout_backend == "llamacpp":
        from harness.engines.llamacpp import LlamaCppEngine

        lc = LlamaCppEngine.for_training(parallel=min(config.rollout_batch_size, 16))
        lc.model_name = policy.name
        # Attempts end where the trainer's token masks expect them to (llama.cpp would also stop at
        # its other end-of-generation tokens).
        lc.stop_ids = stop_ids

        def write() -> None:
            lc.load_weights(policy.merged_weights())

        write()
        return Rollouts(task, problems, get_grader(task.grader), lc, settings, stop_ids, sync=write)
    from harness.engines.vllm import VLLMEngine

    if policy.location is None:
        raise HarnessError("--rollout-backend vllm loads the model from --model; it cannot take a model in memory")
    engine = VLLMEngine.from_model(
        policy.location,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        max_model_len=config.vllm_max_model_len,
        seed=config.seed,
        in_process=True,
        # The policy's compute dtype; vLLM's "auto" would run a float32 checkpoint in float16.
        dtype=policy.compute_dtype,
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
    round_no: int = 1,
) -> dict:
    """One SCoRe step: rollouts, reference, advantages, update, weight sync. Returns the log row."""
    t0 = time.perf_counter()
    # Round 1 keeps the seeds of a run without rounds; later rounds draw other prompts and samples.
    key = [config.seed, stage, step] if round_no == 1 else [config.seed, round_no, stage, step]
    rng = np.random.default_rng(key)
    problems = rollouts.problems
    n_prompts = config.batch_size // config.samples
    chosen = [problems[i] for i in rng.choice(len(problems), n_prompts, replace=len(problems) < n_prompts)]
    seed = config.seed + stage * SEED_STRIDE_STAGE + step * SEED_STRIDE_STEP + (round_no - 1) * SEED_STRIDE_ROUND
    sampling = replace(rollouts.settings, seed=seed)
    policy.model.eval()
    with rollouts.sampling():
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
    batch = by_length(collate(tokenized, pad_id=policy.tokenizer.pad_token_id or 0))
    r1 = torch.tensor([float(e.turns[0].correct) for e in episodes])
    r2 = torch.tensor([float(e.turns[1].correct) for e in episodes])
    t1 = time.perf_counter()

    kl1, kl2 = torch.zeros(len(episodes)), torch.zeros(len(episodes))
    with torch.no_grad():
        for start in range(0, len(batch), config.micro_batch_size):
            micro = trimmed(batch.rows(start, start + config.micro_batch_size))
            logp = _logprobs(config, policy, policy.model, micro)
            with policy.reference_context():
                ref_logp = _logprobs(config, policy, policy.reference_model(), micro)
            kl1.index_add_(0, micro.episode, attempt_kl(logp, ref_logp, micro.mask1.to(logp.device)).cpu().float())
            kl2.index_add_(0, micro.episode, attempt_kl(logp, ref_logp, micro.mask2.to(logp.device)).cpu().float())
    adv = advantages(r1, r2, kl1, kl2, stage=stage, samples=config.samples, coef=coef)
    t2 = time.perf_counter()

    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_total = 0.0
    for start in range(0, len(batch), config.micro_batch_size):
        micro = trimmed(batch.rows(start, start + config.micro_batch_size))
        logp = _logprobs(config, policy, policy.model, micro)
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
    trained = [p for p in policy.model.parameters() if p.requires_grad]
    # The norm before clipping (an infinite bound clips nothing), so the log shows what clipping did.
    grad_norm = torch.nn.utils.clip_grad_norm_(trained, config.max_grad_norm or math.inf)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    t3 = time.perf_counter()
    if rollouts.sync is not None:
        rollouts.sync()
    t4 = time.perf_counter()
    turn1, turn2 = [e.turns[0] for e in episodes], [e.turns[1] for e in episodes]
    return {
        "round": round_no,
        "stage": stage,
        "step": step,
        "reward_t1": float(r1.mean()),
        "reward_t2": float(r2.mean()),
        "delta": float((r2 - r1).mean()),
        "i2c": float(((1 - r1) * r2).mean()),
        "c2i": float((r1 * (1 - r2)).mean()),
        "kl_t1": float(adv.kl1.mean()),
        "kl_t2": float(adv.kl2.mean()),
        "return_t1": float(adv.return1.mean()),
        "return_t2": float(adv.return2.mean()),
        "adv_std_t1": float(adv.adv1.std(unbiased=False)),
        "adv_std_t2": float(adv.adv2.std(unbiased=False)),
        "grad_norm": float(grad_norm),
        "len_t1": float(np.mean([t.completion_tokens for t in turn1])),
        "len_t2": float(np.mean([t.completion_tokens for t in turn2])),
        "trunc_t1": float(np.mean([t.finish_reason == "length" for t in turn1])),
        "trunc_t2": float(np.mean([t.finish_reason == "length" for t in turn2])),
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


def _logprobs(config: TrainConfig, policy: Policy, model: torch.nn.Module, micro: SequenceBatch) -> torch.Tensor:
    """log π of each attempt token under `model` at the rollouts' temperature (0 on prompt tokens)."""
    device = policy.device
    attempts = (micro.mask1 + micro.mask2).to(device)
    ids, mask = micro.input_ids.to(device), micro.attention_mask.to(device)
    return model_logprobs(model, ids, mask, attempts, config.temperature, policy.autocast)


def _evaluate(config: TrainConfig, round_no: int, stage: int, step: int, rollouts: Rollouts, policy: Policy) -> dict:
    """The harness's own `score-eval run` on the held-out set, with the current weights, through the
    rollout engine."""
    run_name = (f"round{round_no}-" if config.rounds > 1 else "") + f"stage{stage}-step{step:05d}"
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
