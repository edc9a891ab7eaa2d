"""Draft tokens (engines/drafts.py), the slot decoder checking them (engines/slots.py), and the
grouped-query attention generation runs under (engines/gqa_attention.py); on the tiny test models."""

from __future__ import annotations

import pytest

from harness.engines.base import SamplingSettings
from harness.engines.drafts import PromptLookup


def test_a_draft_is_what_followed_the_latest_earlier_occurrence_of_the_longest_trailing_run():
    # Worked by hand. (8, 5, 6) occurs nowhere before; (5, 6) ends at index 1, followed by 7, 8, 5, 6.
    assert PromptLookup([5, 6, 7, 8, 5, 6]).draft(3) == [7, 8, 5]
    # (9, 1) ended at index 1 (then 2) and at index 4 (then 3, 9, 1): the latest wins.
    assert PromptLookup([9, 1, 2, 9, 1, 3, 9, 1]).draft(2) == [3, 9]
    # (2) alone last ended at index 4 (then 8), but (1, 2) ended at index 1 (then 9): the longer run wins.
    assert PromptLookup([1, 2, 9, 5, 2, 8, 1, 2]).draft(1) == [9]
    # The last token alone occurred before: (4) ended at index 0, followed by 7, 4.
    assert PromptLookup([4, 7, 4]).draft(2) == [7, 4]
    # A continuation that reaches the end repeats: a row in a loop of 1, 2, 3 keeps looping.
    assert PromptLookup([1, 2, 3, 1, 2, 3]).draft(5) == [1, 2, 3, 1, 2]
    # Nothing occurred before: no draft; nor when none is asked for.
    assert PromptLookup([1, 2, 3]).draft(4) == []
    assert PromptLookup([1, 2, 1]).draft(0) == []


def test_tokens_appended_one_by_one_give_the_drafts_of_the_whole_sequence():
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5]
    grown = PromptLookup(ids[:2])
    for end in range(3, len(ids) + 1):
        grown.extend([ids[end - 1]])
        assert grown.draft(4) == PromptLookup(ids[:end]).draft(4), end


# Prompts that repeat themselves, so drafts are found; several lengths, so rows finish apart.
ECHO = [[{"role": "user", "content": "Say it again: " + "one two three " * k}] for k in (1, 4, 2, 7, 3)]


def count_drafted(monkeypatch) -> dict:
    """Counts, from now on, decode steps that fed drafts, the draft tokens rows took and those they
    did not (the model chose otherwise first), and rows that ended after taking draft tokens in the
    same step, on a stop token or on their last allowed token; `inside` lists, per job key, the
    places in its completion of tokens taken between other tokens of the same step (a draft token
    the model chose, with more taken after it)."""
    from harness.engines import slots

    real = slots.SlotDecoder._verify
    counts = {"steps": 0, "taken": 0, "missed": 0, "stopped": 0, "full": 0, "inside": {}}

    def verify(decoder, drafts, logits):
        taken = real(decoder, drafts, logits)
        if logits.shape[1] > 1:
            counts["steps"] += 1
            counts["taken"] += sum(taken) - len(taken)
            counts["missed"] += sum(len(draft) for draft in drafts) - (sum(taken) - len(taken))
            for row, count in zip(decoder.rows, taken):
                if count > 1:
                    counts["stopped"] += row.tokens[-1] in decoder.stop_ids
                    counts["full"] += len(row.tokens) == decoder.settings.max_new_tokens
                    places = range(len(row.tokens) - count + 1, len(row.tokens) - 1)
                    counts["inside"].setdefault(row.job.key, []).extend(places)
        return taken

    monkeypatch.setattr(slots.SlotDecoder, "_verify", verify)
    return counts


GREEDY = SamplingSettings(max_new_tokens=64)
SAMPLED = SamplingSettings(max_new_tokens=64, temperature=0.1, n=2, seed=1)


@pytest.mark.parametrize(
    ("batch_size", "settings"), [(32, GREEDY), (32, SAMPLED), (4, SAMPLED)], ids=["greedy", "sampled", "drain"]
)
def test_drafts_give_the_tokens_of_one_token_steps(varied_engine, monkeypatch, batch_size, settings):
    """Greedy and sampled (each row draws one random number per token it takes), with free slots
    from the start (32 slots) and only once the queue is empty (4 slots, 10 rows). The test model
    falls into loops after a few dozen tokens, where drafts are right, and drafts it does not follow
    leave masked columns in the cache that later steps must skip."""
    engine = varied_engine
    monkeypatch.setattr(engine, "batch_size", batch_size)
    monkeypatch.setattr(engine, "draft_tokens", 0)
    expected = [[c.token_ids for c in cs] for cs in engine.chat(ECHO, settings)]
    monkeypatch.setattr(engine, "draft_tokens", 8)
    counts = count_drafted(monkeypatch)
    got = [[c.token_ids for c in cs] for cs in engine.chat(ECHO, settings)]
    assert got == expected
    assert counts["taken"] > 0 and counts["missed"] > 0, counts


def decoder_with_rows(model, settings, rows, slots=8):
    """A slot decoder holding `rows` (prompt, tokens so far, generator), stop token 7, no cache."""
    from harness.engines.sampling import Job
    from harness.engines.slots import SlotDecoder, _Row

    decoder = SlotDecoder(model, settings, stop_ids={7}, pad_id=0, on_finished=lambda *args: None, draft_tokens=4)
    decoder.slots = slots
    decoder.rows = [_Row(Job(key, prompt, stream), list(tokens)) for key, (prompt, tokens, stream) in enumerate(rows)]
    return decoder


def logits_choosing(choices: list[list[int]], vocab: int = 10):
    """Logits [rows, places, vocab] whose greedy choice at each place is the given token."""
    import torch

    logits = torch.zeros((len(choices), len(choices[0]), vocab))
    for r, row in enumerate(choices):
        for place, token in enumerate(row):
            logits[r, place, token] = 1.0
    return logits


def test_a_row_takes_the_drafted_tokens_the_model_chose_then_its_own_choice(varied_engine):
    """Worked by hand (stop token 7, at most 6 new tokens). Fed: each row's last token, then its draft.
    Row 0, draft 3 4 5, chosen 3 4 9 6: takes 3 and 4 (drafted and chosen), then 9 (its own choice
    where the draft said 5); nothing after. Row 1, draft 2 7 8, chosen 2 7 8 1: takes 2, then 7, a
    stop token: it ends there, though 8 matched too. Row 2, no draft: its one choice, 4. Row 3, with 4
    of its 6 tokens taken, draft 5 5: takes 5 and then 5 again, its sixth and last token."""
    settings = SamplingSettings(max_new_tokens=6)
    decoder = decoder_with_rows(
        varied_engine.model, settings, [([1, 2], [9], None), ([1], [9], None), ([1], [9], None), ([1], [9] * 4, None)]
    )
    drafts = [[3, 4, 5], [2, 7, 8], [], [5, 5]]
    logits = logits_choosing([[3, 4, 9, 6], [2, 7, 8, 1], [4, 0, 0, 0], [5, 5, 5, 0]])
    assert decoder._verify(drafts, logits) == [3, 2, 1, 2]
    assert [row.tokens[1:] for row in decoder.rows[:3]] == [[3, 4, 9], [2, 7], [4]]
    assert decoder.rows[3].tokens == [9, 9, 9, 9, 5, 5]


def test_a_sampled_row_draws_one_number_per_token_it_takes(varied_engine):
    """Row 0 takes 2 tokens (one drafted token, then its own choice), row 1 takes 1: their streams
    then stand where 2 and 1 draws leave streams seeded alike (a third draw agrees)."""
    import torch

    settings = SamplingSettings(max_new_tokens=8, temperature=1.0)
    streams = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    decoder = decoder_with_rows(varied_engine.model, settings, [([1], [9], streams[0]), ([1], [9], streams[1])])
    # Logits that leave no choice (one token holds all the probability), so the outcome is known.
    logits = logits_choosing([[3, 6, 0], [5, 0, 0]]) * 1e4
    assert decoder._verify([[3, 4], [2, 2]], logits) == [2, 1]
    for stream, draws, seed in zip(streams, (2, 1), (11, 12)):
        fresh = torch.Generator().manual_seed(seed)
        for _ in range(draws):
            torch.rand((), generator=fresh, dtype=torch.float64)
        next_draw = torch.rand((), generator=fresh, dtype=torch.float64)
        assert torch.rand((), generator=stream, dtype=torch.float64) == next_draw


def test_drafts_are_cut_to_free_slots_and_to_what_a_row_may_still_take(varied_engine):
    """8 slots, draft_tokens 4. 2 rows: 8 // 2 - 1 = 3 tokens a draft; a row with 5 of its 6 tokens
    may take one more, fed as its last token: no draft. 5 rows: 8 // 5 - 1 = 0, no drafts at all."""
    settings = SamplingSettings(max_new_tokens=6)
    loop = [1, 2, 3, 1, 2, 3]  # drafts from it: 1 2 3 1 ...
    decoder = decoder_with_rows(varied_engine.model, settings, [(loop, [1], None), (loop, [1, 2, 3, 1, 2], None)])
    assert decoder._drafts() == [[2, 3, 1], []]
    decoder = decoder_with_rows(varied_engine.model, settings, [(loop, [1], None)] * 5)
    assert decoder._drafts() == [[]] * 5


def test_generation_attention_gives_the_logits_of_transformers_sdpa_bit_for_bit(varied_engine):
    """Left-padded prefill and a decode step of 3 tokens a row (one row's last two masked, as
    padding after a short draft), with and without gqa_attention."""
    import torch

    from harness.engines import gqa_attention
    from harness.engines.kv_cache import GrowingCache

    model = varied_engine.model
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped

    def logits():
        torch.manual_seed(0)
        cache, ids = GrowingCache(), torch.randint(5, 1000, (3, 12))
        mask = torch.ones_like(ids)
        mask[1, :5] = 0
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        first = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
        step = torch.ones((3, 3), dtype=torch.long)
        step[2, 1:] = 0
        mask = torch.cat([mask, step], dim=1)
        positions = positions[:, -1:] + 1 + torch.arange(3)
        ids = torch.randint(5, 1000, (3, 3))
        second = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
        return first[mask[:, :12].bool()], second

    with torch.inference_mode():
        plain = logits()
        with gqa_attention.apply(model):
            assert model.config._attn_implementation == gqa_attention.NAME
            grouped = logits()
    assert model.config._attn_implementation == "sdpa"
    assert all(torch.equal(a, b) for a, b in zip(plain, grouped))
