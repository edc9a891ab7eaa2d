"""Red-team checks of hf's follow-ups going to the front of the slot decoder's queue (f812bc4).

A k-turn run through chat_with_follow_ups is compared with one `engine.chat` call per turn on the
same engine (the reference); stop ids are every fifth token id, so rows end at different steps and
several in one step."""

from collections import Counter

import pytest

from harness.engines.base import SamplingSettings

FIRSTS = [[{"role": "user", "content": "Tell me about the number " + "seven " * k}] for k in (0, 9, 2, 30, 5, 1)]
TURNS = 3


def _next(conversation, completions, turn):
    answer = {"role": "assistant", "content": completions[0].text}
    return conversation + [answer, {"role": "user", "content": f"Again, turn {turn + 2}."}]


def _with_follow_ups(engine, settings, seeds):
    """{(first conversation, turn): each sample's token ids} from one chat_with_follow_ups call."""
    conversations, turn_of, origin, seed_of = list(FIRSTS), [0] * len(FIRSTS), list(range(len(FIRSTS))), list(seeds)

    def on_done(index, completions):
        if turn_of[index] + 1 >= TURNS:
            return None
        conversations.append(_next(conversations[index], completions, turn_of[index]))
        turn_of.append(turn_of[index] + 1)
        origin.append(origin[index])
        seed_of.append(seed_of[index] + 1000)
        return conversations[-1], seed_of[-1]

    out = engine.chat_with_follow_ups(FIRSTS, settings, on_done, seeds)
    return {(origin[i], turn_of[i]): [c.token_ids for c in cs] for i, cs in enumerate(out)}


def _turn_by_turn(engine, settings, seeds):
    conversations, seeds, result = list(FIRSTS), list(seeds), {}
    for turn in range(TURNS):
        out = engine.chat(conversations, settings, seeds=seeds)
        result.update({(i, turn): [c.token_ids for c in cs] for i, cs in enumerate(out)})
        conversations = [_next(c, cs, turn) for c, cs in zip(conversations, out)]
        seeds = [seed + 1000 for seed in seeds]
    return result


@pytest.mark.parametrize("batch_size", [1, 3])
def test_three_turns_of_three_samples_equal_one_chat_per_turn(varied_engine, monkeypatch, batch_size):
    """Not broken: n=3 seeded samples (more jobs than free places), 3 turns, rows ending together."""
    from harness.engines import slots

    monkeypatch.setattr(varied_engine, "stop_ids", set(range(0, len(varied_engine.tokenizer), 5)))
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, n=3, seed=3)
    seeds = list(range(10, 10 + len(FIRSTS)))
    monkeypatch.setattr(varied_engine, "batch_size", 1)
    expected = _turn_by_turn(varied_engine, settings, seeds)
    continued, real_heads = [], slots.SlotDecoder._heads

    def heads(self, jobs):
        continued.extend(job.key for job in jobs if job.key in self.continued)
        return real_heads(self, jobs)

    monkeypatch.setattr(slots.SlotDecoder, "_heads", heads)
    monkeypatch.setattr(varied_engine, "batch_size", batch_size)
    assert _with_follow_ups(varied_engine, settings, seeds) == expected
    # Every job of turns 2 and 3 (6 conversations x 2 turns x 3 samples) continued its previous turn.
    assert len(continued) == len(FIRSTS) * (TURNS - 1) * 3


@pytest.mark.parametrize("method", ["_retire", "_keep_for_follow_ups", "_admit"])
def test_out_of_memory_mid_run_loses_and_repeats_no_job_of_any_turn(varied_engine, monkeypatch, method):
    """Not broken: memory running out at the 4th call of `method` (auto batch 3 -> 1) reports every
    job of every turn once, and the seeded samples equal one chat per turn."""
    import torch

    from harness.engines import jobs, slots

    monkeypatch.setattr(varied_engine, "stop_ids", set(range(0, len(varied_engine.tokenizer), 5)))
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, n=2, seed=3)
    seeds = list(range(10, 10 + len(FIRSTS)))
    monkeypatch.setattr(varied_engine, "batch_size", 1)
    expected = _turn_by_turn(varied_engine, settings, seeds)
    reports, real_finished, real_method, calls = (
        Counter(),
        jobs.JobQueue.finished,
        getattr(slots.SlotDecoder, method),
        [],
    )

    def finished(self, job, tokens, stopped):
        reports[job.key] += 1
        real_finished(self, job, tokens, stopped)

    def failing(self, *args):
        calls.append(method)
        if len(calls) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_method(self, *args)

    monkeypatch.setattr(jobs.JobQueue, "finished", finished)
    monkeypatch.setattr(slots.SlotDecoder, method, failing)
    monkeypatch.setattr(varied_engine, "auto_batch", True)
    monkeypatch.setattr(varied_engine, "batch_size", 3)
    assert _with_follow_ups(varied_engine, settings, seeds) == expected
    assert varied_engine.batch_size == 1
    assert sorted(reports) == list(range(len(FIRSTS) * TURNS * 2)) and set(reports.values()) == {1}
