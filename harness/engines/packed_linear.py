"""Linear layers through oneDNN with their weights packed once, for generation on CPU.

torch's float32 `F.linear` on CPU calls MKL's sgemm, which packs its operands into its own layout on
every call; at the row counts of decoding that work is not amortised. Over the linear layers of
the embedded model (SmolLM2-135M, float32, 2 cores) one decode step of 16 rows took 57 ms through
F.linear and 21.6 ms with weights laid out once for oneDNN; 2 rows 37 against 13 ms, a 90-token
prefill 190 against 65 ms (`benchmarks/bench_engines.py` runs the engine both ways). torch.compile's CPU
backend packs weights the same way (inductor's weight freezing), but it compiles per shape, and the
slot decoder's shapes change at every step. So the two oneDNN ops inductor emits are called directly:
`torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise`. They are private, so `available`
checks once that they run and agree with F.linear, and generation keeps the plain layers otherwise.

The packed copy is a second copy of the weights (540 MB for the embedded model), made when a
generation starts and kept while the weights are unchanged: a weight that changed in place (an
optimiser step in the trainer) or was replaced is packed again at the next generation. Results
differ from F.linear by rounding only (~1e-6 of the output's size), like any other change of
kernel or batch shape.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator

import torch


@functools.cache
def available() -> bool:
    """Whether this torch build has the oneDNN ops and they compute a Linear."""
    try:
        weight = torch.linspace(-1, 1, 64 * 32).reshape(64, 32)
        inputs = torch.linspace(-2, 2, 3 * 32).reshape(3, 32)
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, 16)
            out = torch.ops.mkldnn._linear_pointwise(inputs, packed, None, "none", [], "")
        return bool(torch.allclose(out, torch.nn.functional.linear(inputs, weight), atol=1e-4))
    except (AttributeError, RuntimeError):
        return False


class PackedLinears:
    """The packed weights of one model's float32 CPU Linear layers, reused while unchanged."""

    def __init__(self) -> None:
        self.enabled = True  # a benchmark turns it off to measure the plain layers in the same run
        # layer -> (the weight's identity and version when packed, the packed weight)
        self._packed: weakref.WeakKeyDictionary[torch.nn.Linear, tuple[tuple, torch.Tensor]] = (
            weakref.WeakKeyDictionary()
        )

    @contextlib.contextmanager
    def apply(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block, `model`'s eligible Linear layers compute through their packed weights
        (inference only: the packed op has no gradient, so use it under torch.inference_mode)."""
        layers = self.layers(model)
        if not layers:
            yield
            return
        try:
            for layer in layers:
                layer.forward = functools.partial(_packed_forward, layer, self._pack(layer))
            yield
        finally:
            for layer in layers:
                layer.__dict__.pop("forward", None)

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Linear]:
        """The layers `apply` packs: plain float32 Linear layers on CPU, when the ops run here."""
        if not self.enabled or not available():
            return []
        return [m for m in model.modules() if type(m) is torch.nn.Linear and _eligible(m)]

    def _pack(self, layer: torch.nn.Linear) -> torch.Tensor:
        weight = layer.weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        known = self._packed.get(layer)
        if known is not None and known[0] == key:
            return known[1]
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 16)
        self._packed[layer] = (key, packed)
        return packed


def _eligible(layer: torch.nn.Linear) -> bool:
    # A layer whose forward was already replaced (accelerate's offload hooks) keeps it.
    return layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32 and "forward" not in vars(layer)


def _packed_forward(layer: torch.nn.Linear, packed: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    # Under autocast (the trainer's bfloat16 rollouts) F.linear computes in the autocast dtype, and
    # so must this layer; the packed op would compute in float32 or refuse a bfloat16 input.
    if inputs.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return torch.nn.functional.linear(inputs, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(inputs, packed, layer.bias, "none", [], "")
