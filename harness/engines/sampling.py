"""Next-token choice for a batch of rows, each sampling from its own random stream.

Each row draws one uniform number per token from its own `torch.Generator` (seeded from its
conversation's seed) and picks the token by inverse CDF over its temperature- and top-p-filtered
distribution. A row's choices therefore depend only on its own logits and its own seed, never on
which other rows share the batch or in what order rows were admitted, so a conversation samples the
same tokens alone, in any batch, and after a resume, up to the rounding by which batch shapes change
logits (with top-p below 1, a token whose probability lies within rounding of the cut can fall in or
out of it: seen on a tiny random model, whose probabilities are nearly equal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from harness.engines.base import SamplingSettings

# Sample j of a conversation draws from seed + j * SAMPLE_SEED_STRIDE modulo 2**32 (the CPU
# generator keeps 32 bits of its seed): the golden-ratio stride sends a conversation's samples far
# from each other and from the seeds of other conversations (consecutive by default, hashes in episodes).
SAMPLE_SEED_STRIDE = 0x9E3779B9


@dataclass
class Job:
    """One completion to generate (hf's slot decoder, the llamacpp engine): a prompt and the random
    stream its tokens are drawn from."""

    key: int  # the caller's handle for this completion: conversation * n + sample
    prompt: list[int]
    generator: torch.Generator | None  # None when greedy


# Called as each job's row ends: (job, sampled token ids, whether it stopped on a stop token).
Finished = Callable[[Job, list[int], bool], None]


def row_generator(seed: int, sample: int) -> torch.Generator:
    """The random stream of one completion: a conversation's seed and its sample index."""
    return torch.Generator().manual_seed((seed + sample * SAMPLE_SEED_STRIDE) % 2**32)


def choose(logits: torch.Tensor, settings: SamplingSettings, generators: Sequence[torch.Generator]) -> list[int]:
    """One token id per row of `logits` [rows, vocab]: argmax when greedy, else a seeded draw.

    Top-p keeps the most probable tokens whose preceding mass (in descending order) is below
    `top_p` (and any token as probable as the last of them), so the most probable token is always kept.
    """
    if settings.greedy:
        return logits.argmax(dim=-1).tolist()
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        ranked = probs.sort(dim=-1, descending=True).values
        kept = ((ranked.cumsum(dim=-1) - ranked) < settings.top_p).sum(dim=-1, keepdim=True)
        probs = probs.masked_fill(probs < ranked.gather(1, kept - 1), 0.0)
    # The draw runs over the vocabulary in its own order, not in order of probability: rounding
    # differences between batch shapes can reorder near-equal probabilities, and a draw over a
    # reordered list would pick another token; in vocabulary order they move a boundary by a rounding error.
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    # One uniform per row, from the row's own generator (on the CPU, whatever the model's device).
    uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    picked = torch.searchsorted(cdf, uniform.to(cdf.device).unsqueeze(1) * total, right=True)
    # Never past the last token with any probability (the first index where the cdf reaches its total).
    picked = torch.minimum(picked, (cdf < total).sum(dim=-1, keepdim=True))
    return picked.squeeze(1).tolist()
