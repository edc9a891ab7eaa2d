"""SCoRe training at a real size on one CUDA GPU, offline: peak memory, tokens/s and the time split.

Builds a randomly initialised Llama-style model of about 1.5B parameters (Qwen2.5-1.5B's shape, with
the embedded SmolLM2 tokenizer's 49k vocabulary, so nothing is downloaded) and runs a few Stage I and
Stage II steps of the real trainer step (`harness.train.trainer.train_step`): rollouts through the
HF engine, reference and policy scoring (chunked log-probabilities), RLOO/KL advantages, the update,
in bf16 autocast over fp32 master weights with gradient checkpointing (the one-gpu preset). A random
model never emits its end-of-turn token, so every attempt runs to --max-new-tokens: the worst case for
memory and time. It also prints the KL at the first step, which must be 0.

    python benchmarks/gpu_check.py                    # defaults below
    python benchmarks/gpu_check.py --max-new-tokens 512 --batch-size 64 --micro-batch-size 8
    python benchmarks/gpu_check.py --rollout-backend vllm   # rollouts in vLLM, weights synced each step
    python benchmarks/gpu_check.py --device cpu --hidden-size 64 --layers 2 --intermediate-size 128 \
        --heads 2 --kv-heads 1 --batch-size 4 --samples 2 --micro-batch-size 2 --max-new-tokens 4 --steps 2
                                                      # CPU: checks only that the script runs (CI does this)
Write the printed figures and the card into the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--intermediate-size", type=int, default=8960)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="episodes per step")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="per attempt")
    parser.add_argument("--steps", type=int, default=3, help="steps of each stage (the first is warm-up)")
    parser.add_argument("--lora-r", type=int, default=0, help="0 = full fine-tuning")
    parser.add_argument("--device", default="cuda", help="cpu only checks the script's plumbing (use tiny sizes)")
    parser.add_argument("--rollout-backend", default="hf", choices=["hf", "vllm"])
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness.data import load_problems
    from harness.models import resolve_model
    from harness.tasks import load_task
    from harness.train.config import SMOKE_DATA, resolve_config
    from harness.train.objective import Coefficients
    from harness.train.policy import load_policy, make_optimizer
    from harness.train.trainer import make_rollouts, train_step

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this check needs one (--device cpu only checks the plumbing)")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None)[1])
    shape = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(shape)  # fp32 master weights
    n_params = sum(p.numel() for p in model.parameters())
    model_dir = None
    if args.rollout_backend == "vllm":  # vLLM loads its copy from disk; the policy then comes from there too
        model_dir = tempfile.mkdtemp(prefix="score-gpu-check-")
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        model = None
    config = resolve_config(
        "one-gpu",
        None,
        {
            "data": str(SMOKE_DATA),
            "batch_size": args.batch_size,
            "samples": args.samples,
            "micro_batch_size": args.micro_batch_size,
            "rollout_batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "lora_r": args.lora_r,
            "device": args.device,
            "model": model_dir,
            "rollout_backend": args.rollout_backend,
        },
    ).validate()
    task = load_task(config.task)
    problems, _ = load_problems(task, config.data)
    policy = load_policy(config, model, tokenizer)
    rollouts = make_rollouts(config, task, problems, policy)
    coef = Coefficients(config.beta1, config.beta2, config.alpha)
    held = torch.cuda.memory_allocated() / 2**30 if cuda else 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for stage in (1, 2):
        optimizer, scheduler = make_optimizer(config, policy.model)
        for step in range(1, args.steps + 1):
            sync()
            t0 = time.perf_counter()
            row = train_step(config, stage, step, rollouts, policy, optimizer, scheduler, coef)
            sync()
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(
                f"stage {stage} step {step}: {row['wall_s']:.1f}s  rollout {row['rollout_s']:.1f}s  reference "
                f"{row['reference_s']:.1f}s  update {row['update_s']:.1f}s  sync {row['sync_s']:.1f}s  "
                f"{row['tokens_per_s']:.0f} tok/s  "
                f"kl_t1 {row['kl_t1']:.3g}",
                flush=True,
            )
    rollouts.grader.close()
    if model_dir:
        shutil.rmtree(model_dir, ignore_errors=True)
    timed = [r for r in rows if r["step"] > 1]  # the first step of a stage warms up kernels and allocators
    mean = {
        k: float(np.mean([r[k] for r in timed]))
        for k in ("wall_s", "rollout_s", "reference_s", "update_s", "sync_s", "tokens_per_s")
    }
    print("\n== SCoRe GPU check ==")
    card = torch.cuda.get_device_name() if cuda else "CPU (plumbing check only)"
    print(f"card            {card}  (torch {torch.__version__})")
    print(
        f"model           random Llama-style, {n_params / 1e9:.2f}B parameters, "
        f"{'full fine-tuning' if not args.lora_r else f'LoRA r={args.lora_r}'}, bf16 autocast, gradient checkpointing, "
        f"{args.rollout_backend} rollouts"
    )
    print(
        f"batch           {config.batch_size} episodes "
        f"({config.batch_size // config.samples} prompts x {config.samples}), "
        f"micro-batch {config.micro_batch_size}, {config.max_new_tokens} new tokens per attempt"
    )
    if cuda:
        vllm_part = ", and vLLM's weights and pre-allocated KV cache" if args.rollout_backend == "vllm" else ""
        print(
            f"peak memory     {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated, "
            f"{torch.cuda.max_memory_reserved() / 2**30:.1f} GiB reserved; {held:.1f} GiB of it was held "
            f"before the first step (model, reference{vllm_part})"
        )
    print(
        f"step            {mean['wall_s']:.1f} s: rollout {mean['rollout_s']:.1f} s, "
        f"reference {mean['reference_s']:.1f} s, "
        f"update {mean['update_s']:.1f} s, weight sync {mean['sync_s']:.1f} s "
        f"(mean of {len(timed)} steps after warm-up)"
    )
    print(f"tokens/s        {mean['tokens_per_s']:.0f} (all sequence tokens of a step / its wall time)")
    first = rows[0]
    print(
        f"KL at step 1    t1 {first['kl_t1']:.3g}, t2 {first['kl_t2']:.3g} (before any update; the reference "
        "computes as the policy does, so both must be 0)"
    )


if __name__ == "__main__":
    main()
