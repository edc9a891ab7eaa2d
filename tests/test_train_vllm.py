"""`--rollout-backend vllm`: rollouts come from a vLLM copy of the model that gets the policy's weights
(LoRA merged, under the plain model's parameter names) at the start and after every optimizer step,
with the prefix cache dropped each time. vLLM itself needs CUDA, so these run through
tests/stand_ins/vllm, whose `load_weights` rejects any name the model does not have, as vLLM's does."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from harness.grading import Verdict, register
from harness.train.config import SMOKE_DATA, TrainConfig
from harness.train.policy import load_policy

TASK_YAML = """\
name: parity
grader: test-parity
data: {id_field: unique_id, answer_field: answer, required_fields: [problem, answer]}
prompts: {first_turn: "{{ problem }}", correction: "Try again."}
generation: {max_new_tokens: 6}
"""


@register("test-parity")
class ParityGrader:
    """Correct when the response has an even number of characters: rewards that vary between
    samples, so the RLOO advantages and hence the updates are not zero on a random model."""

    def grade(self, items):
        return [Verdict(extracted=r, correct=len(r) % 2 == 0) for r, _ in items]

    def close(self):
        pass


def parity_config(tmp_path, model_dir, **settings) -> TrainConfig:
    """vllm rollouts of the parity task on the tiny model, on CPU, with a large step so weights move."""
    (tmp_path / "parity.yaml").write_text(TASK_YAML)
    base = {
        "model": str(model_dir),
        "task": str(tmp_path / "parity.yaml"),
        "data": str(SMOKE_DATA),
        "output_dir": str(tmp_path / "run"),
        "rollout_backend": "vllm",
        "batch_size": 8,
        "samples": 4,
        "lr": 5e-2,
        "device": "cpu",
    }
    return TrainConfig(**(base | settings))


@pytest.mark.parametrize("lora_r", [0, 4])
def test_merged_weights_are_the_plain_models_weights(tiny_model_dir, lora_r):
    """What is loaded into vLLM equals what the stage checkpoint holds (peft's merge_and_unload)."""
    import copy

    policy = load_policy(TrainConfig(model=str(tiny_model_dir), data="x", lora_r=lora_r, device="cpu"))
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # LoRA starts with B = 0; make the adapter count
    merged = dict(policy.merged_weights())
    reference = copy.deepcopy(policy.model).merge_and_unload() if lora_r else policy.model
    expected = reference.state_dict()
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    if lora_r:  # the adapter is in what was merged, not only the base weights
        base = {n.replace(".base_layer.", "."): p for n, p in policy.model.get_base_model().state_dict().items()}
        assert any(not torch.equal(merged[n], base[n]) for n in merged)


def test_vllm_rollouts_sample_from_the_weights_of_the_last_step(stand_in_vllm, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from harness.train.trainer import train

    config = parity_config(
        tmp_path, tiny_model_dir, stage1_steps=2, stage2_steps=1, micro_batch_size=4, rollout_batch_size=8, lora_r=4
    )
    result = train(config)

    init = stand_in_vllm.CALLS[0]["init"]
    # In-process, in the policy's compute dtype: float32 here (auto on CPU), bfloat16 under auto on CUDA.
    assert (init["dtype"], init["VLLM_ENABLE_V1_MULTIPROCESSING"]) == ("float32", "0")
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # set only while vLLM was being built
    calls = [next(iter(c)) for c in stand_in_vllm.CALLS]
    # built, loaded with the starting weights, then per step: the rollouts' requests (both turns, each
    # next turn added as its first turn finishes), then the new weights
    steps = [list(group) for _, group in itertools.groupby(calls)]
    assert [names[0] for names in steps] == ["init", "load_weights", "reset_prefix_cache"] + [
        "add_request",
        "load_weights",
        "reset_prefix_cache",
    ] * 3
    assert {len(names) for names in steps if names[0] == "add_request"} == {2 * config.rollout_batch_size}
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    loaded = [c["load_weights"] for c in stand_in_vllm.CALLS if "load_weights" in c]
    assert all(names == sorted(start) for names in loaded)  # every weight, under its plain name

    (llm,) = stand_in_vllm.INSTANCES
    final = AutoModelForCausalLM.from_pretrained(result.checkpoints[2]).state_dict()
    served = llm._hf.state_dict()
    for name, tensor in final.items():
        torch.testing.assert_close(served[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.allclose(served[n], start[n]) for n in start)  # the steps did change the weights


def test_a_resumed_run_loads_its_restored_weights_into_the_new_vllm_engine(stand_in_vllm, tiny_model_dir, tmp_path):
    """After a crash the new vLLM copy starts from the checkpoint's weights, not the starting model's."""
    from transformers import AutoModelForCausalLM

    from harness.train.trainer import train

    config = parity_config(tmp_path, tiny_model_dir, stage="1", stage1_steps=2, micro_batch_size=8)
    first = train(config)
    stand_in_vllm.CALLS.clear()
    train(config, resume=True)  # nothing left to do: it only rebuilds the engine and the checkpoint

    assert [next(iter(c)) for c in stand_in_vllm.CALLS] == ["init", "load_weights", "reset_prefix_cache"]
    resumed = stand_in_vllm.INSTANCES[-1]._hf.state_dict()
    saved = AutoModelForCausalLM.from_pretrained(first.checkpoints[1]).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.allclose(saved[n], start[n]) for n in start)


def test_without_vllm_training_stops_before_loading_anything_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    import sys

    from harness.errors import HarnessError
    from harness.train import trainer

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    monkeypatch.setattr(trainer, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(HarnessError, match=r"--rollout-backend hf"):
        trainer.train(parity_config(tmp_path, tiny_model_dir))
    assert not (tmp_path / "run").exists()
