"""The policy and its reference: the KL is exactly 0 before the first update in every precision, the
reference can be named (--reference), and rollouts sample from exactly the distribution the loss scores."""

from __future__ import annotations

import json

import pytest
import torch

from harness.data import load_problems
from harness.errors import HarnessError
from harness.tasks import load_task
from harness.train import trainer as T
from harness.train.config import SMOKE_DATA, TrainConfig
from harness.train.objective import Coefficients
from harness.train.policy import load_policy, make_optimizer


def first_step(config: TrainConfig, stage: int = 1):
    """Load the policy and take step 1 of `stage`: its log row and the policy."""
    task = load_task(config.task)
    problems, _ = load_problems(task, config.data)
    torch.manual_seed(0)
    policy = load_policy(config)
    optimizer, scheduler = make_optimizer(config, policy.model)
    rollouts = T.make_rollouts(config, task, problems, policy)
    try:
        row = T.train_step(config, stage, 1, rollouts, policy, optimizer, scheduler, Coefficients())
    finally:
        rollouts.grader.close()
    return row, policy


def small(model_dir, **settings) -> TrainConfig:
    return TrainConfig(
        model=str(model_dir), data=str(SMOKE_DATA), batch_size=4, samples=2, micro_batch_size=2,
        max_new_tokens=8, device="cpu", **settings,
    )  # fmt: skip


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": "float32"},
        # bfloat16 autocast over float32 master weights: the GPU default. The reference used to be a
        # bfloat16 copy, which differed from the policy by rounding alone.
        {"dtype": "bfloat16"},
        {"dtype": "bfloat16", "lora_r": 4},  # LoRA: the reference is the policy with its adapter off
    ],
    ids=["float32", "bfloat16-autocast", "bfloat16-lora"],
)
def test_kl_to_the_reference_is_exactly_zero_before_the_first_update(tiny_model_dir, settings):
    row, policy = first_step(small(tiny_model_dir, **settings))
    assert row["len_t1"] > 0 and row["len_t2"] > 0  # there were attempt tokens to score
    assert (row["kl_t1"], row["kl_t2"]) == (0.0, 0.0)
    if policy.reference is not None:
        assert next(policy.reference.parameters()).dtype == next(policy.model.parameters()).dtype


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with different random weights (a stand-in for a Stage I checkpoint)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("other")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def test_reference_names_the_model_the_kl_is_taken_against(tiny_model_dir, other_model_dir):
    """A Stage II run from a Stage I checkpoint keeps the KL to the base: --reference names it."""
    same, _ = first_step(small(tiny_model_dir, reference=str(tiny_model_dir)), stage=2)
    assert (same["kl_t1"], same["kl_t2"]) == (0.0, 0.0)
    row, policy = first_step(small(other_model_dir, reference=str(tiny_model_dir), lora_r=4), stage=2)
    assert abs(row["kl_t1"]) > 1e-3 and abs(row["kl_t2"]) > 1e-3
    ref_weight = policy.reference.get_output_embeddings().weight
    start_weight = policy.model.get_output_embeddings().weight
    assert not torch.equal(ref_weight, start_weight)  # the policy starts from --model, the reference is the base


def test_a_reference_with_another_vocabulary_is_refused(tiny_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path)
    with pytest.raises(HarnessError, match="vocabulary of 100 tokens"):
        load_policy(small(tiny_model_dir, reference=str(tmp_path)))


def test_rollouts_switch_off_the_checkpoints_sampling_settings_and_score_at_the_temperature(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A checkpoint's generation_config.json (repetition penalty, top-k, ...) would change the sampling
    distribution behind the loss's back; rollouts generate without it, and the loss scores
    softmax(logits / T) at the rollouts' temperature. The checkpoint keeps its settings."""
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config_file = model_dir / "generation_config.json"
    generation = json.loads(config_file.read_text()) | {"repetition_penalty": 1.5, "top_k": 5, "min_new_tokens": 3}
    config_file.write_text(json.dumps(generation))

    seen, temperatures = [], []
    scored = T.model_logprobs

    def spy_scoring(model, ids, mask, positions, temperature, autocast):
        temperatures.append(temperature)
        return scored(model, ids, mask, positions, temperature, autocast)

    monkeypatch.setattr(T, "model_logprobs", spy_scoring)
    from transformers import GenerationMixin

    generate = GenerationMixin.generate

    def spy_generate(self, *args, **kwargs):
        seen.append(self.generation_config)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy_generate)
    row, policy = first_step(small(model_dir, temperature=0.7))
    # The hf engine decodes in its own loop (engines/slots.py) and never calls generate; where generate
    # is called, the checkpoint's settings are off.
    assert all(c.repetition_penalty != 1.5 and c.top_k != 5 and not c.min_new_tokens for c in seen)
    from harness.engines.base import SamplingSettings
    from harness.engines.hf import HFEngine

    conversation = [[{"role": "user", "content": "What is 2+2?"}]]
    settings = SamplingSettings(max_new_tokens=6)
    penalised = HFEngine.from_model(str(model_dir)).chat(conversation, settings)[0][0].token_ids
    plain = HFEngine.from_model(str(tiny_model_dir)).chat(conversation, settings)[0][0].token_ids
    assert penalised == plain  # a repetition penalty of 1.5 and min_new_tokens 3 would change these
    assert set(temperatures) == {0.7}
    assert policy.model.generation_config.repetition_penalty == 1.5  # restored after the rollouts
    assert row["kl_t1"] == 0.0


def test_sampling_settings_the_loss_cannot_score_are_refused():
    with pytest.raises(HarnessError, match="--top-p"):
        TrainConfig(data="x.jsonl", top_p=0.9).validate()
    with pytest.raises(HarnessError, match="float16 needs loss scaling"):
        TrainConfig(data="x.jsonl", dtype="float16").validate()
    assert TrainConfig(dtype="bf16").dtype == "bfloat16" and TrainConfig(dtype="fp32").dtype == "float32"
