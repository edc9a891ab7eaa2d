"""Linear layers through oneDNN with packed weights (engines/packed_linear.py), against torch's own
F.linear on the same inputs: the expected values are F.linear's, within float32 rounding."""

import pytest
import torch

from harness.engines import packed_linear
from harness.engines.packed_linear import PackedLinears

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this torch build has no oneDNN linear ops")


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.SiLU(), torch.nn.Linear(96, 40, bias=False))


@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (16, 48), (3, 90, 48)])
def test_packed_layers_compute_what_f_linear_computes(shape):
    net = model()
    inputs = torch.randn(shape)
    with torch.inference_mode():
        expected = net(inputs)
        with PackedLinears().apply(net):
            assert all("forward" in layer.__dict__ for layer in (net[0], net[2]))  # really replaced
            got = net(inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_layers_are_given_back_after_the_block_even_on_an_error():
    net = model()
    with pytest.raises(ValueError), PackedLinears().apply(net):
        raise ValueError("inside")
    assert all("forward" not in layer.__dict__ for layer in (net[0], net[2]))


def test_weights_are_packed_once_and_again_after_an_in_place_update():
    """The trainer's optimiser changes the weights in place between rollouts: the next generation
    must use the new weights, and an unchanged weight must not be packed again."""
    net, packs = model(), PackedLinears()
    inputs = torch.randn(4, 48)
    with torch.inference_mode(), packs.apply(net):
        net(inputs)
    first = packs._packed[net[0]][1]
    with torch.inference_mode(), packs.apply(net):
        net(inputs)
    assert packs._packed[net[0]][1] is first
    with torch.no_grad():
        net[0].weight.mul_(-2.0)  # like optimizer.step(): same tensor, new numbers
    with torch.inference_mode():
        expected = net(inputs)
        with packs.apply(net):
            got = net(inputs)
    assert packs._packed[net[0]][1] is not first
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_plain_float32_cpu_layers_are_packed_and_a_disabled_set_packs_none():
    class Wrapped(torch.nn.Linear):  # e.g. a LoRA layer: its own forward must run
        pass

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8).double(), Wrapped(8, 8))
    packs = PackedLinears()
    assert packs.layers(net) == [net[0]]
    packs.enabled = False
    assert packs.layers(net) == []


def test_the_hf_engine_follows_weights_changed_between_calls(varied_engine):
    """Greedy tokens after an in-place weight change equal those of the unpacked layers."""
    from harness.engines.base import SamplingSettings

    engine, settings = varied_engine, SamplingSettings(max_new_tokens=8)
    conversations = [[{"role": "user", "content": "What is 2+3?"}], [{"role": "user", "content": "Name a prime."}]]
    assert engine.describe()["packed_linear_layers"] == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    before = [c[0].token_ids for c in engine.chat(conversations, settings)]
    weight = engine.model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(3.0)
        after = [c[0].token_ids for c in engine.chat(conversations, settings)]
        engine.packed_linears.enabled = False
        expected = [c[0].token_ids for c in engine.chat(conversations, settings)]
    finally:
        engine.packed_linears.enabled = True
        with torch.no_grad():
            weight.copy_(saved)
    assert after == expected
    assert after != before  # the change did reach the tokens, so the comparison above means something


def test_under_autocast_a_layer_computes_in_the_autocast_dtype_as_f_linear_does():
    net, inputs = model(), torch.randn(4, 48)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(inputs)
        with PackedLinears().apply(net):
            got = net(inputs)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(got, expected)
