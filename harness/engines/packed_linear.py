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

The packed copy is a second copy of the weights (540 MB for the embedded model, packed in about
0.2 s), made when a generation starts and dropped when it ends, so it always holds the weights of
that moment, however they were changed in between (an optimiser step, fused or not; a weight sync
through `.data`; peft merging an adapter), and costs no memory outside generation. Results differ
from F.linear by rounding only (~1e-6 of the output's size), like any other change of kernel or
batch shape.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


@functools.cache
def available() -> bool:
    """Whether this torch build has the oneDNN ops and they compute a Linear (checked in float32,
    whatever autocast the first caller is under, as the answer is kept for the process)."""
    try:
        weight = torch.linspace(-1, 1, 64 * 32).reshape(64, 32)
        inputs = torch.linspace(-2, 2, 3 * 32).reshape(3, 32)
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, 16)
            out = torch.ops.mkldnn._linear_pointwise(inputs, packed, None, "none", [], "")
            return bool(torch.allclose(out, torch.nn.functional.linear(inputs, weight), atol=1e-4))
    except (AttributeError, RuntimeError):
        return False


class PackedLinears:
    """Packs a model's float32 CPU Linear layers for the length of a generation."""

    def __init__(self) -> None:
        self.enabled = True  # a benchmark turns it off to measure the plain layers in the same run

    @contextlib.contextmanager
    def apply(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block, `model`'s eligible Linear layers compute through weights packed on
        entry. Under CPU autocast (the trainer's bfloat16 rollouts) F.linear computes in bfloat16,
        so nothing is packed."""
        layers = [] if torch.is_autocast_enabled("cpu") else self.layers(model)
        try:
            for layer in layers:
                with torch.inference_mode():
                    packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), 16)
                layer.forward = functools.partial(_packed_forward, layer, packed)
            yield
        finally:
            for layer in layers:
                layer.__dict__.pop("forward", None)

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Linear]:
        """The layers `apply` packs: plain float32 Linear layers on CPU, when the ops run here."""
        if not self.enabled or not available():
            return []
        return [m for m in model.modules() if type(m) is torch.nn.Linear and _eligible(m)]


def _eligible(layer: torch.nn.Linear) -> bool:
    # A layer whose forward was already replaced (accelerate's offload hooks) keeps it.
    return layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32 and "forward" not in vars(layer)


def _packed_forward(layer: torch.nn.Linear, packed: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    # The packed op has no gradient, and under autocast F.linear computes in the autocast dtype:
    # there, and for any other input dtype, the layer computes as it would unpacked.
    if inputs.dtype != torch.float32 or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return torch.nn.functional.linear(inputs, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(inputs, packed, layer.bias, "none", [], "")
