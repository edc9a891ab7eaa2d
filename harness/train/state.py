"""What lets a training run resume: the resumable state under DIR/state/ and the step log
DIR/train_log.csv, cut back to the state's position on --resume so no step is logged twice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.store import write_json
from harness.train.policy import Policy

LOG_COLUMNS = (
    "round",
    "stage",
    "step",
    "reward_t1",
    "reward_t2",
    "delta",
    "i2c",
    "c2i",
    "kl_t1",
    "kl_t2",
    "return_t1",
    "return_t2",
    "adv_std_t1",
    "adv_std_t2",
    "grad_norm",
    "len_t1",
    "len_t2",
    "trunc_t1",
    "trunc_t2",
    "loss",
    "lr",
    "tokens_per_s",
    "rollout_s",
    "reference_s",
    "update_s",
    "sync_s",
    "eval_acc_t1",
    "eval_acc_t2",
    "eval_delta",
    "eval_i2c",
    "eval_c2i",
)


def save_state(policy: Policy, optimizer, state_dir: Path, round_no: int, stage: int, step: int) -> None:
    """Trainable weights, optimizer state and position; position.json is written last, so it names a whole state."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "position.json").unlink(missing_ok=True)
    torch.save(policy.trainable(), state_dir / "trainable.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
    write_json(state_dir / "position.json", {"round": round_no, "stage": stage, "step": step})


def read_position(state_dir: Path) -> dict | None:
    path = state_dir / "position.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_state(policy: Policy, state_dir: Path) -> None:
    saved = torch.load(state_dir / "trainable.pt", map_location=policy.device)
    params = dict(policy.model.named_parameters())
    missing = set(policy.trainable()) - set(saved)
    if missing or any(name not in params for name in saved):
        raise HarnessError(f"{state_dir} was saved by a different model or LoRA setting; resume with the same settings")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def truncate_log(path: Path, round_no: int, stage: int, step: int) -> None:
    """Drop the rows of steps after the checkpoint we resume from; they are redone. (A log written
    before rounds existed has no round column: its rows are round 1.)"""
    if not path.exists():
        return
    with path.open(newline="") as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if (int(r.get("round") or 1), int(r["stage"]), int(r["step"])) <= (round_no, stage, step)
        ]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_log(path: Path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))
