"""`score-eval train` end to end on a tiny random model: files, checkpoints that `score-eval run` loads,
--resume, config resolution, and the per-attempt token masks on the real SmolLM2 chat template."""

from __future__ import annotations

import csv
import json

import pytest

from harness.data import Problem
from harness.episodes import Episode, Turn
from harness.errors import HarnessError
from harness.tasks import load_task
from harness.train.config import SMOKE_DATA, TrainConfig, resolve_config
from tests.conftest import run_cli


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_stage_checkpoints_that_run_evaluates(tiny_model_dir, tmp_path):
    out = tmp_path / "score"
    result = run_cli(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(SMOKE_DATA),
            "--output-dir",
            str(out),
            "--stage1-steps",
            "1",
            "--stage2-steps",
            "1",
            "--batch-size",
            "4",
            "--samples",
            "2",
            "--micro-batch-size",
            "2",
            "--max-new-tokens",
            "8",
            "--lora-r",
            "4",
            "--seed",
            "3",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "train_log.csv", "train_curves.png", "stage1/config.json", "stage2/config.json"):
        assert (out / name).is_file(), name
    assert not any("lora" in p.name for p in (out / "stage2").iterdir())  # merged: a plain HF checkpoint
    log = rows(out / "train_log.csv")
    assert [(r["stage"], r["step"]) for r in log] == [("1", "1"), ("2", "1")]
    assert json.loads((out / "config.json").read_text())["settings"]["lora_r"] == 4

    evaluated = run_cli(
        [
            "run",
            "--model",
            str(out / "stage2"),
            "--data",
            str(SMOKE_DATA),
            "--max-new-tokens",
            "8",
            "--output-dir",
            str(tmp_path / "results"),
            "--run-name",
            "after",
        ]
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "results" / "after" / "summary.json").is_file()


def test_resume_continues_after_the_last_checkpoint_without_repeating_steps(tiny_model_dir, tmp_path):
    from harness.train.trainer import train

    base = {
        "model": str(tiny_model_dir),
        "data": str(SMOKE_DATA),
        "output_dir": str(tmp_path / "run"),
        "stage1_steps": 1,
        "stage2_steps": 1,
        "batch_size": 4,
        "samples": 2,
        "micro_batch_size": 4,
        "max_new_tokens": 6,
        "lr": 1e-3,
        "device": "cpu",
    }
    train(TrainConfig(**base))
    first = rows(tmp_path / "run" / "train_log.csv")
    with pytest.raises(HarnessError, match="--resume"):
        train(TrainConfig(**base))
    train(TrainConfig(**{**base, "stage2_steps": 3}), resume=True)
    log = rows(tmp_path / "run" / "train_log.csv")
    assert [(r["stage"], r["step"]) for r in log] == [("1", "1"), ("2", "1"), ("2", "2"), ("2", "3")]
    assert log[:2] == first


def test_tokens_of_each_attempt_are_exactly_its_text_and_end_of_turn(embedded_checkpoint):
    from transformers import AutoTokenizer

    from harness.engines.hf import HFEngine, stop_token_ids
    from harness.train.rollouts import ATTEMPT1, ATTEMPT2, PROMPT, tokenize_episode

    tok = AutoTokenizer.from_pretrained(embedded_checkpoint)
    engine = HFEngine.__new__(HFEngine)
    engine.tokenizer = tok
    task = load_task("math")
    problem = Problem("p", "5", {"problem": "What is $2+3$?", "answer": "5"})
    episode = Episode(
        problem,
        0,
        [Turn("It is $4$.", "stop", 6, "4", False), Turn("The final answer is $5$", "length", 9, "5", True)],
    )
    out = tokenize_episode(task, episode, engine.render, tok, stop_token_ids(None, tok))

    def pick(label):
        return tok.decode([i for i, a in zip(out.input_ids, out.attempt) if a == label])

    assert pick(ATTEMPT1) == "It is $4$.<|im_end|>"  # stopped: the sampled end-of-turn token is trained
    assert pick(ATTEMPT2) == "The final answer is $5$"  # cut at max_new_tokens: no end token
    prompt = tok.decode([i for i, a in zip(out.input_ids, out.attempt) if a == PROMPT])
    assert "There might be an error" in prompt and "What is $2+3$?" in prompt and "It is" not in prompt
    whole = engine.render(
        [
            {"role": "user", "content": task.first_prompt(problem.fields)},
            {"role": "assistant", "content": "It is $4$."},
            {"role": "user", "content": task.correction_prompt(problem.fields)},
        ]
    )
    assert tok.decode(out.input_ids) == whole + "The final answer is $5$"


def test_settings_resolve_defaults_then_preset_then_file_then_command_line(tmp_path):
    assert TrainConfig().lr == 5e-6 and TrainConfig().batch_size == 512 and TrainConfig().alpha == 10.0
    assert resolve_config("mbpp").lr == 1e-5 and resolve_config("mbpp").beta2 == 0.25
    (tmp_path / "a.yaml").write_text("preset: smoke\nlr: 2.0e-5\nmax-new-tokens: 16\n")
    (tmp_path / "a.toml").write_text("lr = 3e-5\nstage = 1\n")
    config = resolve_config(None, str(tmp_path / "a.yaml"), {"max_new_tokens": 24, "seed": None})
    assert (config.preset, config.lr, config.max_new_tokens, config.batch_size) == ("smoke", 2e-5, 24, 4)
    toml = resolve_config("math", str(tmp_path / "a.toml"), {})
    assert (toml.lr, toml.stage, toml.stages) == (3e-5, "1", [1])
    with pytest.raises(HarnessError, match="unknown setting"):
        resolve_config(None, None, {"learning_rate": 1.0})
    with pytest.raises(HarnessError, match="multiple of --samples"):
        TrainConfig(data="x", batch_size=6, samples=4).validate()


def test_every_shipped_train_config_file_resolves():
    from harness.train.config import REPO

    files = sorted((REPO / "configs" / "train").glob("*.[yt][ao]ml"))
    assert len(files) >= 3
    for path in files:
        config = resolve_config(None, str(path), {"data": "x.jsonl"})
        assert config.samples >= 2 and config.batch_size % config.samples == 0, path


def test_a_prompt_with_a_skipped_episode_is_dropped_whole_so_rloo_groups_stay_intact():
    from harness.train.trainer import _complete_groups

    def episode(pid, sample, skipped=None):
        turns = [] if skipped else [Turn("a", "stop", 1, "a", True), Turn("b", "stop", 1, "b", False)]
        return Episode(Problem(pid, "x", {}), sample, turns, skipped=skipped)

    episodes = [episode("p", 0), episode("p", 1), episode("q", 0), episode("q", 1, skipped="turn 2: too long")]
    assert [(e.problem.id, e.sample) for e in _complete_groups(episodes, 2)] == [("p", 0), ("p", 1)]
    with pytest.raises(HarnessError, match="context"):
        _complete_groups(episodes[2:], 2)
