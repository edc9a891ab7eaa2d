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


def in_place(net: torch.nn.Sequential) -> None:
    with torch.no_grad():
        net[0].weight.mul_(-2.0)  # like optimizer.step(): same tensor, new numbers


def through_data(net: torch.nn.Sequential) -> None:
    net[0].weight.data.mul_(-2.0)  # a weight sync, an EMA, peft's merge_adapter: no version bump


def fused_adam_step(net: torch.nn.Sequential) -> None:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)  # no version bump either
    net(torch.randn(4, 48)).pow(2).sum().backward()
    optimizer.step()


@pytest.mark.parametrize("change", [in_place, through_data, fused_adam_step])
def test_weights_changed_between_generations_are_followed(change):
    """The trainer changes the weights between rollouts: the next generation must compute with the
    new numbers, however they were written (the last two were found in review: a cache keyed on the
    weights' version counters served them stale)."""
    net, packs = model(), PackedLinears()
    inputs = torch.randn(4, 48)
    with torch.inference_mode(), packs.apply(net):
        net(inputs)
    change(net)
    with torch.inference_mode():
        expected = net(inputs)
        with packs.apply(net):
            got = net(inputs)
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


def test_inside_the_block_float32_inputs_go_through_the_packed_op(monkeypatch):
    """The speed-up is the point: a float32 input outside autocast must not fall back to F.linear
    (every other test here passes if `_packed_forward` always falls back)."""
    net, inputs = model(), torch.randn(4, 48)
    with torch.inference_mode():
        expected = net(inputs)

    def no_f_linear(*args, **kwargs):
        raise AssertionError("F.linear called inside the packed block")

    with torch.inference_mode(), PackedLinears().apply(net):
        monkeypatch.setattr(torch.nn.functional, "linear", no_f_linear)
        got = net(inputs)
        monkeypatch.undo()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_whether_the_ops_are_available_does_not_depend_on_autocast_at_the_first_call():
    """`available` is cached for the process: a first call under CPU autocast (a generation under
    autocast before any float32 one, e.g. a resumed bfloat16 trainer, which skips describe()) must
    not turn packing off for the rest of the process (found in review)."""
    packed_linear.available.cache_clear()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = packed_linear.available()
    finally:
        packed_linear.available.cache_clear()
    assert under_autocast == packed_linear.available()


def test_with_gradients_on_a_layer_computes_through_f_linear_so_gradients_reach_the_weights():
    """The packed op has no gradient: a forward with autograd on (never the engine's, which runs
    under inference_mode) must still give every weight its gradient (found in review)."""
    net, inputs = model(), torch.randn(4, 48)
    with PackedLinears().apply(net):
        net(inputs).pow(2).sum().backward()
    assert net[0].weight.grad is not None and net[2].weight.grad is not None


def test_under_autocast_nothing_is_packed():
    """The trainer's bfloat16 rollouts would pack every layer and never use the copies (found in review)."""
    import unittest.mock

    net = model()
    with unittest.mock.patch.object(torch.ops.mkldnn, "_reorder_linear_weight", side_effect=AssertionError):
        with torch.autocast("cpu", dtype=torch.bfloat16), PackedLinears().apply(net):
            pass
