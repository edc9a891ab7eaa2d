"""The SCoRe effect on one machine: the embedded 135M model trained with SCoRe and with a naive
baseline on the same budget, then all three measured on the same held-out problems.

Every step is an ordinary `score-eval` command, printed before it runs:
  1. `score-eval run` of the base model on the arithmetic task's held-out split      -> DIR/base
  2. `score-eval train` SCoRe: Stage I then Stage II on the training split            -> DIR/train-score
  3. `score-eval train` the baseline, single-stage RL on the second attempt's reward:
     the Stage I objective with β2 = β1 (r2 − β1·KL on attempt 2, β1·KL on attempt 1, no
     strong anchor on the first attempt), for Stage I's plus Stage II's steps        -> DIR/train-baseline
  4. `score-eval run` of both trained models on the held-out split                    -> DIR/stage2, DIR/baseline
  5. `score-eval report` over base, stage2, baseline                                   -> DIR/report.md (+ plots)

    python benchmarks/score_demo.py --output-dir demo            # the full demo (sizes below)
    python benchmarks/score_demo.py --output-dir demo --quick    # a few problems and steps: plumbing only

The printed table compares the three runs; the training curves are DIR/train-*/train_curves.png.
The default sizes fit 60 minutes on 2 cores (see SIZES); the README gives the measured table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name: (held-out episodes, new tokens per attempt, steps per stage, episodes per step, samples per prompt)
# "full" was sized from a step measured on this machine (2 cores, float32: 16 two-turn episodes at 48
# new tokens, about 40 s; rollouts ~35%, reference ~25%, update ~40%). Its measured run (README): 24
# SCoRe steps in 868 s, the baseline's 24 in 753 s, evaluations of 500 episodes in 174-276 s, 2,253 s in all.
SIZES = {
    "full": (500, 48, 12, 16, 4),
    "quick": (4, 12, 1, 4, 2),
}


def second_attempts(run_dir: Path) -> tuple[int, int, int]:
    """(two-turn episodes, second attempts that repeat the first word for word, second attempts whose
    extracted answer differs from the first's): what tells a model that never revises from one that
    revises badly, which Δ alone does not."""
    turns = [json.loads(line)["turns"] for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    pairs = [t for t in turns if len(t) >= 2]
    repeated = sum(t[0]["response"].strip() == t[1]["response"].strip() for t in pairs)
    changed = sum(t[0]["extracted"] != t[1]["extracted"] for t in pairs)
    return len(pairs), repeated, changed


def print_second_attempts(out: Path, names: list[str]) -> None:
    print("\n| run | episodes | second attempt repeats the first | answer changed |\n|---|---:|---:|---:|")
    for name in names:
        n, repeated, changed = second_attempts(out / name)
        print(f"| {name} | {n} | {repeated} ({100 * repeated / n:.1f}%) | {changed} ({100 * changed / n:.1f}%) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="where base/, stage2/, baseline/ and the report go")
    parser.add_argument("--quick", action="store_true", help="a few problems and one step per stage: plumbing only")
    parser.add_argument("--task", default="arithmetic", help="a generated task (train and test splits)")
    parser.add_argument("--eval-limit", type=int, help="held-out problems (one greedy episode each)")
    parser.add_argument("--max-new-tokens", type=int, help="per attempt, in training and evaluation")
    parser.add_argument("--steps", type=int, help="steps of Stage I and of Stage II (the baseline gets both)")
    parser.add_argument("--batch-size", type=int, help="episodes per training step")
    parser.add_argument("--samples", type=int, help="episodes per prompt (RLOO)")
    parser.add_argument("--lr", type=float, default=3e-5, help="higher than the paper's 5e-6: 24 steps, not 3,000")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="of training rollouts (the loss scores softmax(logits / T)); at 1.0 the 135M model rambles past "
        "48 tokens in about half its samples and is right in under 10%% of them (measured)",
    )
    parser.add_argument("--lora-r", type=int, default=0, help="0 = full fine-tuning (135M parameters fit on CPU)")
    args = parser.parse_args()
    eval_limit, max_new, steps, batch, samples = SIZES["quick" if args.quick else "full"]
    eval_limit = args.eval_limit or eval_limit
    max_new = args.max_new_tokens or max_new
    steps = args.steps or steps
    batch = args.batch_size or batch
    samples = args.samples or samples

    out = Path(args.output_dir)
    if (out / "base").exists() or (out / "train-score").exists():
        sys.exit(f"error: {out} already holds a demo; choose another --output-dir or remove it")
    out.mkdir(parents=True, exist_ok=True)
    common = ["--task", args.task, "--max-new-tokens", str(max_new)]
    train = [
        "train", *common, "--batch-size", str(batch), "--samples", str(samples), "--micro-batch-size", str(batch),
        "--rollout-batch-size", str(batch), "--lr", str(args.lr), "--lora-r", str(args.lora_r),
        "--temperature", str(args.temperature),
        "--save-every", str(10 * steps),
    ]  # fmt: skip

    def evaluate(name: str, model: Path | None) -> list[str]:
        run = ["run", *common, "--turns", "2", "--limit", str(eval_limit), "--batch-size", "32"]
        return run + (["--model", str(model)] if model else []) + ["--output-dir", str(out), "--run-name", name]

    score_dir, baseline_dir = out / "train-score", out / "train-baseline"
    steps_each = ["--stage1-steps", str(steps), "--stage2-steps", str(steps)]
    commands = [
        ("base model", evaluate("base", None)),
        ("SCoRe: Stage I then Stage II", [*train, *steps_each, "--output-dir", str(score_dir)]),
        (
            "baseline: RL on the second attempt's reward, same steps",
            [
                *train,
                "--stage",
                "1",
                "--stage1-steps",
                str(2 * steps),
                "--beta2",
                "0.01",
                "--output-dir",
                str(baseline_dir),
            ],
        ),
        ("SCoRe model", evaluate("stage2", score_dir / "stage2")),
        ("baseline model", evaluate("baseline", baseline_dir / "stage1")),
        (
            "report",
            ["report", str(out / "base"), str(out / "stage2"), str(out / "baseline"), "-o", str(out / "report.md")],
        ),
    ]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for title, command in commands:
        print(f"\n== {title}: score-eval {' '.join(command)}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "harness", *command], cwd=REPO, env=env)
        if done.returncode != 0:
            sys.exit(f"error: `score-eval {command[0]}` failed (exit {done.returncode}); see its output above")
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print_second_attempts(out, ["base", "stage2", "baseline"])
    load = os.getloadavg()
    print(
        f"\ndemo finished in {time.perf_counter() - started:.0f} s; load average now "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; report: {out / 'report.md'}"
    )


if __name__ == "__main__":
    main()
