"""The per-row sampler: top-p, temperature and inverse-CDF draws, checked against worked-out frequencies."""

import math

import torch

from harness.engines.base import SamplingSettings
from harness.engines.sampling import choose, row_generator

PROBS = [0.5, 0.3, 0.2]
DRAWS = 6000


def frequencies(settings: SamplingSettings, probs=PROBS) -> list[float]:
    logits = torch.log(torch.tensor([probs] * DRAWS))
    generators = [row_generator(seed, 0) for seed in range(DRAWS)]
    picked = choose(logits, settings, generators)
    return [picked.count(t) / DRAWS for t in range(len(probs))]


def close(measured: list[float], expected: list[float]) -> bool:
    # Four standard errors of a frequency p over DRAWS draws: sqrt(p(1-p)/DRAWS) <= 0.0065.
    return all(abs(m - e) <= 4 * math.sqrt(max(e * (1 - e), 1e-9) / DRAWS) + 1e-9 for m, e in zip(measured, expected))


def test_temperature_one_draws_tokens_in_proportion_to_their_probability():
    assert close(frequencies(SamplingSettings(1, temperature=1.0)), PROBS)


def test_top_p_keeps_the_tokens_whose_preceding_mass_is_below_it_and_renormalises():
    # Preceding masses 0, 0.5, 0.8: top_p 0.6 keeps tokens 0 and 1, as 0.5/0.8 and 0.3/0.8.
    assert close(frequencies(SamplingSettings(1, temperature=1.0, top_p=0.6)), [0.625, 0.375, 0.0])
    # top_p 0.5 keeps token 0 alone (token 1's preceding mass 0.5 is not below 0.5).
    assert frequencies(SamplingSettings(1, temperature=1.0, top_p=0.5)) == [1.0, 0.0, 0.0]


def test_temperature_two_flattens_the_distribution():
    # p^(1/2) normalised: sqrt(.5), sqrt(.3), sqrt(.2) = .7071, .5477, .4472 over 1.7020.
    roots = [math.sqrt(p) for p in PROBS]
    assert close(frequencies(SamplingSettings(1, temperature=2.0)), [r / sum(roots) for r in roots])


def test_a_token_of_probability_zero_is_never_drawn():
    assert frequencies(SamplingSettings(1, temperature=1.0), probs=[0.0, 1.0, 0.0]) == [0.0, 1.0, 0.0]


def test_a_row_draws_the_same_token_whatever_rows_share_the_batch():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    settings = SamplingSettings(1, temperature=1.0, top_p=0.9)
    together = choose(logits, settings, [row_generator(s, 0) for s in range(5)])
    alone = [choose(logits[i : i + 1], settings, [row_generator(i, 0)])[0] for i in range(5)]
    assert together == alone


def test_the_samples_of_one_conversation_draw_different_streams():
    draws = [torch.rand(4, generator=row_generator(7, j)) for j in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not torch.equal(torch.rand(4, generator=row_generator(8, 0)), draws[0])
