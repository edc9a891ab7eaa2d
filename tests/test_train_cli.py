"""`score-eval train` end to end on a tiny random model: files, checkpoints that `score-eval run` loads,
--resume, config resolution, and the per-attempt token masks on the real SmolLM2 chat template."""

from __future__ import annotations

import csv
import json

import pytest
import torch

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


def tiny_run(model_dir, tmp_path, **settings) -> dict:
    """Settings of a one-step-per-stage run of the tiny model on CPU."""
    return {
        "model": str(model_dir), "data": str(SMOKE_DATA), "output_dir": str(tmp_path / "run"), "stage1_steps": 1,
        "stage2_steps": 1, "batch_size": 4, "samples": 2, "micro_batch_size": 4, "max_new_tokens": 6,
        "device": "cpu", **settings,
    }  # fmt: skip


def test_resume_continues_after_the_last_checkpoint_without_repeating_steps(tiny_model_dir, tmp_path):
    from harness.train.trainer import train

    base = tiny_run(tiny_model_dir, tmp_path, lr=1e-3)
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
    (out,) = tokenize_episode(task, episode, engine.render, tok, stop_token_ids(None, tok))  # one row

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


@pytest.fixture(scope="module")
def smol_render(embedded_checkpoint):
    """The embedded model's tokenizer and the hf engine's rendering of a conversation."""
    from transformers import AutoTokenizer

    from harness.engines.hf import HFEngine

    engine = HFEngine.__new__(HFEngine)
    engine.tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint)
    return engine.tokenizer, engine.render


def sampled_episode(tok, first_ids: list[int], second_ids: list[int]) -> Episode:
    """A two-turn episode whose attempts are given as sampled token ids, both stopped."""
    problem = Problem("p", "5", {"problem": "What is $2+3$?", "answer": "5"})
    turns = [
        Turn(tok.decode(ids, skip_special_tokens=True), "stop", len(ids), token_ids=tuple(ids))
        for ids in (first_ids, second_ids)
    ]
    return Episode(problem, 0, turns)


def labelled(row, label):
    return [i for i, a in zip(row.input_ids, row.attempt) if a == label]


def test_canonical_sampled_ids_make_one_row_with_the_end_of_turn_token_once(smol_render):
    """The usual case: y1's sampled ids are the tokenizer's own split and the template writes the same
    <|im_end|> after y1, so (x, y1, p, y2) is one row whose prefix is exactly the turn-2 prompt."""
    from harness.engines.hf import stop_token_ids
    from harness.episodes import conversation
    from harness.train.rollouts import ATTEMPT1, ATTEMPT2, tokenize_episode

    tok, render = smol_render
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    first = tok("It is $4$.", add_special_tokens=False)["input_ids"] + [im_end]
    second = tok("The answer is $5$", add_special_tokens=False)["input_ids"] + [im_end]
    task, episode = load_task("math"), sampled_episode(tok, first, second)
    (row,) = tokenize_episode(task, episode, render, tok, stop_token_ids(None, tok))
    assert labelled(row, ATTEMPT1) == first and labelled(row, ATTEMPT2) == second
    turn2 = tok(render(conversation(task, episode.problem, ["It is $4$."])), add_special_tokens=False)["input_ids"]
    assert row.input_ids == turn2 + second  # exactly what the model saw at turn 2, then y2


def test_a_non_canonical_split_makes_two_exact_rows(smol_render):
    """An engine can sample a split of a string other than the tokenizer's own. The loss must score
    the sampled ids after the turn-1 prompt, and y2 after the turn-2 prompt the model saw (where y1
    was re-tokenised from text): no single row holds both, so the episode becomes two."""
    from harness.engines.hf import stop_token_ids
    from harness.episodes import conversation
    from harness.train.rollouts import ATTEMPT1, ATTEMPT2, PROMPT, tokenize_episode

    tok, render = smol_render

    def encode(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    first = [i for p in ["It", " i", "s", " $", "4", "$."] for i in encode(p)] + [im_end]
    second = encode("The answer is $5$") + [im_end]
    assert first[:-1] != encode("It is $4$.")  # a different split of the same text
    task, episode = load_task("math"), sampled_episode(tok, first, second)
    row1, row2 = tokenize_episode(task, episode, render, tok, stop_token_ids(None, tok))
    turn1 = encode(render(conversation(task, episode.problem, [])))
    turn2 = encode(render(conversation(task, episode.problem, ["It is $4$."])))
    assert (row1.input_ids, labelled(row1, ATTEMPT1), labelled(row1, ATTEMPT2)) == (turn1 + first, first, [])
    assert (row2.input_ids, labelled(row2, ATTEMPT2), labelled(row2, ATTEMPT1)) == (turn2 + second, second, [])
    assert labelled(row2, PROMPT) == turn2


def test_a_stop_token_the_template_does_not_write_is_trained_in_its_own_row(smol_render):
    """y1 stopped on <|endoftext|> but turn 2 saw the template's <|im_end|>: y1 with the stop token it
    sampled is one row, y2 after the turn-2 prompt another."""
    from harness.engines.hf import stop_token_ids
    from harness.train.rollouts import ATTEMPT1, ATTEMPT2, tokenize_episode

    tok, render = smol_render
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    first = tok("It is $4$.", add_special_tokens=False)["input_ids"] + [endoftext]
    episode = sampled_episode(tok, first, [endoftext])
    rows = tokenize_episode(load_task("math"), episode, render, tok, stop_token_ids(None, tok) | {endoftext})
    assert [labelled(r, ATTEMPT1) for r in rows] == [first, []]
    assert [labelled(r, ATTEMPT2) for r in rows] == [[], [endoftext]]
    assert endoftext not in rows[1].input_ids[:-1]  # the turn-2 prompt holds the template's <|im_end|> only


def test_collated_rows_remember_their_episode_and_keep_their_masks():
    """Collated rows remember their episode (the trainer sums KL and takes advantages by it)."""
    from harness.train.rollouts import ATTEMPT1, ATTEMPT2, PROMPT, Row, collate

    one = [Row([5, 6, 7, 8], [PROMPT, ATTEMPT1, PROMPT, ATTEMPT2])]
    two = [Row([5, 6], [PROMPT, ATTEMPT1]), Row([5, 9, 8], [PROMPT, PROMPT, ATTEMPT2])]
    batch = collate([one, two])
    assert batch.episode.tolist() == [0, 1, 1] and len(batch) == 3
    assert batch.mask1.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert batch.mask2.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_a_step_is_the_same_whether_episodes_are_one_row_or_two(tiny_model_dir, monkeypatch):
    """Splitting an episode into (x, y1) and (turn-2 prompt, y2) rows, spread over micro-batches, must
    give the same KL, advantages, loss and gradient as the single row: per-episode KL is summed over
    its rows and each row takes its episode's advantages. Forcing every episode into two rows here
    exercises that path on every step (with real rollouts it is rare)."""
    import copy

    from harness.data import load_problems
    from harness.train import rollouts as R
    from harness.train import trainer as T
    from harness.train.objective import Coefficients
    from harness.train.policy import load_policy, make_optimizer

    config = TrainConfig(
        model=str(tiny_model_dir), data=str(SMOKE_DATA), batch_size=8, samples=4, micro_batch_size=3,
        max_new_tokens=8, lr=1e-9, device="cpu",
    )  # fmt: skip
    task = load_task(config.task)
    problems, _ = load_problems(task, config.data)
    one_row = R.tokenize_episode

    split_by_themselves = []

    def two_rows(*args):
        rows = one_row(*args)
        if len(rows) == 2:  # a random model's samples often re-tokenise differently: already two rows
            split_by_themselves.append(rows)
            return rows
        (row,) = rows
        last1 = max(i for i, a in enumerate(row.attempt) if a == R.ATTEMPT1)
        first = R.Row(
            row.input_ids[: last1 + 1], [a if a != R.ATTEMPT2 else R.PROMPT for a in row.attempt[: last1 + 1]]
        )
        second = R.Row(row.input_ids, [a if a == R.ATTEMPT2 else R.PROMPT for a in row.attempt])
        return [first, second]

    torch.manual_seed(0)
    start = load_policy(config)
    with torch.no_grad():  # away from the reference, so the KL terms are not zero
        for p in start.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    results = {}
    for name, split in (("one", one_row), ("two", two_rows)):
        monkeypatch.setattr(T, "tokenize_episode", split)
        policy = copy.deepcopy(start)
        optimizer, scheduler = make_optimizer(config, policy.model)
        rollouts = T.make_rollouts(config, task, problems, policy)
        row = T.train_step(config, 2, 1, rollouts, policy, optimizer, scheduler, Coefficients(0.5, 0.5, 10.0))
        rollouts.grader.close()
        grads = torch.cat([p.grad.flatten() for p in policy.model.parameters() if p.grad is not None])
        results[name] = (row, grads)
    (one, grad_one), (two, grad_two) = results["one"], results["two"]
    assert len(split_by_themselves) < 8  # some episodes were split here, not all by themselves
    assert abs(one["kl_t1"]) > 1e-3 and abs(one["kl_t2"]) > 1e-3 and grad_one.abs().max() > 0
    for key in ("reward_t1", "reward_t2", "kl_t1", "kl_t2", "loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(grad_two, grad_one, rtol=1e-4, atol=1e-6)


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


def test_micro_batches_are_cut_from_rows_sorted_by_length():
    from harness.train.rollouts import ATTEMPT1, ATTEMPT2, PROMPT, Row, by_length, collate

    short = [Row([5, 6], [PROMPT, ATTEMPT1])]
    long = [Row([5, 6, 7, 8, 9], [PROMPT, ATTEMPT1, PROMPT, PROMPT, ATTEMPT2])]
    middle = [Row([5, 6, 7], [PROMPT, PROMPT, ATTEMPT2])]
    batch = by_length(collate([short, long, middle]))
    assert batch.attention_mask.sum(dim=1).tolist() == [5, 3, 2]
    assert batch.episode.tolist() == [1, 2, 0]  # rows keep their episode, so KL and advantages follow them
    assert batch.mask2.tolist() == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_rounds_interleave_the_stages_log_every_figure_and_keep_the_best_round(tiny_model_dir, tmp_path):
    from harness.train.trainer import train

    base = tiny_run(tiny_model_dir, tmp_path, rounds=2)
    result = train(TrainConfig(**base))
    log = rows(result.log_path)
    assert [(r["round"], r["stage"], r["step"]) for r in log] == [
        ("1", "1", "1"),
        ("1", "2", "1"),
        ("2", "1", "1"),
        ("2", "2", "1"),
    ]
    for r in log:
        assert 0 <= float(r["trunc_t1"]) <= 1 and float(r["len_t1"]) > 0 and float(r["grad_norm"]) >= 0
        assert float(r["adv_std_t2"]) >= 0 and r["return_t1"] and r["return_t2"]
    assert result.best == tmp_path / "run" / "best" and (result.best / "config.json").is_file()
    # A random model gets every reward 0: the rounds tie, and a tie keeps the earlier round.
    assert json.loads((result.best / "score_train.json").read_text())["round"] == 1


def test_best_round_is_the_one_with_the_highest_mean_second_attempt_reward(tmp_path):
    """Rounds' Stage II mean r2, from the log: round 1 (0.2 + 0.4) / 2 = 0.3, round 2 0.5, round 3 0.4."""
    from harness.train.state import append_log
    from harness.train.trainer import _keep_best

    log = tmp_path / "train_log.csv"
    rewards = {1: [0.2, 0.4], 2: [0.5, 0.5], 3: [0.4, 0.4]}
    for round_no, values in rewards.items():
        append_log(log, {"round": round_no, "stage": 1, "step": 1, "reward_t2": 0.9})  # Stage I does not count
        for step, value in enumerate(values, 1):
            append_log(log, {"round": round_no, "stage": 2, "step": step, "reward_t2": value})
        (tmp_path / "stage2").mkdir(exist_ok=True)
        (tmp_path / "stage2" / "score_train.json").write_text(json.dumps({"stage": 2, "written_in": round_no}))
        _keep_best(tmp_path, log, round_no)
        kept = json.loads((tmp_path / "best" / "score_train.json").read_text())
        assert kept["round"] == kept["written_in"] == {1: 1, 2: 2, 3: 2}[round_no]
    assert kept["round_reward"] == pytest.approx(0.5)


def test_train_help_shows_real_defaults_and_the_dtype_names_of_run():
    result = run_cli(["train", "--help"])
    assert result.returncode == 0
    assert "[default: None]" not in result.stdout
    assert "[default: 1500]" in result.stdout and "auto|bfloat16|float16|float32" in result.stdout
    from harness.train.config import config_from_cli

    assert config_from_cli(None, None, False, False, {"dtype": "bf16", "data": "x"}).dtype == "bfloat16"
    bad = run_cli(["train", "--data", str(SMOKE_DATA), "--top-p", "0.9"])
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--top-p" in bad.stderr


def test_training_takes_the_train_split_of_a_file_that_holds_every_split(tmp_path):
    """MBPP's mbpp.jsonl holds all 974 problems; the hub's train split is task_id 601-974 (374 problems,
    google-research's MBPP README), and the test split (11-510) that `run` evaluates must never be trained on."""
    from harness.train.trainer import training_problems
    from tests.conftest import SHARED_DATA, require_shared

    data = require_shared(SHARED_DATA / "mbpp" / "mbpp.jsonl")
    task = load_task("mbpp")
    problems, source = training_problems(task, TrainConfig(task="mbpp", data=str(data)))
    ids = sorted(int(p.fields["task_id"]) for p in problems)
    assert (len(ids), ids[0], ids[-1], source.split) == (374, 601, 974, "train")
    everything, _ = training_problems(task, TrainConfig(task="mbpp", data=str(data), split="all"))
    assert len(everything) == 974
    generated, source = training_problems(load_task("arithmetic"), TrainConfig(task="arithmetic"))
    assert (len(generated), source.split) == (1200, "train")
