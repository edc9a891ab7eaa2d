"""The figures bench_engines.py derives (not run on a model here: the bench itself is slow)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from benchmarks.bench_engines import ForwardClock, decode_at_full_rows
from harness.engines import slots


def test_the_forward_clock_splits_prefills_from_decode_steps_and_counts_rows(monkeypatch):
    monkeypatch.setattr(slots.SlotDecoder, "_forward", lambda decoder, ids, *args, **kwargs: ids.shape)
    with ForwardClock.around() as clock:
        # As the decoder calls it: ids [rows, tokens a row], then mask, positions, cache; decode
        # steps also give `keep` (one logit kept per token fed: the last token and its draft).
        assert slots.SlotDecoder._forward(None, torch.zeros(3, 90), None, None, None) == (3, 90)
        slots.SlotDecoder._forward(None, torch.zeros(2, 1), None, None, None)  # a one-token prefill
        for rows, fed in ((16, 1), (16, 1), (5, 3)):
            slots.SlotDecoder._forward(None, torch.zeros(rows, fed), None, None, None, keep=fed)
    assert (clock.steps, clock.rows, clock.fed) == (3, 37, 47)
    assert clock.prefill > 0 and clock.decode > 0
    assert slots.SlotDecoder._forward(None, torch.zeros(2, 1)) == (2, 1)  # unwrapped again: not counted
    assert clock.steps == 3


def test_decode_at_full_rows_puts_the_harness_decode_work_at_the_busy_run_s_cost_per_row_step():
    # Worked by hand: 100 useful tokens over 4 completions need 96 row-steps (each completion's first
    # token comes from its prefill). The busy run took 8 s for 160 row-steps, 0.05 s each, so the
    # decode work costs 4.8 s; the harness run's 10 s had 6 s of decode steps: 10 - 6 + 4.8 = 8.8 s.
    episodes = [SimpleNamespace(turns=[1, 2]), SimpleNamespace(turns=[1]), SimpleNamespace(turns=[1])]
    harness = {"wall": 10.0, "tokens": 100, "episodes": episodes}
    clock, busy = ForwardClock(), ForwardClock()
    clock.decode = 6.0
    busy.decode, busy.rows = 8.0, 160
    assert abs(decode_at_full_rows(harness, clock, busy) - 8.8) < 1e-9
