"""No turn barrier on an in-process engine (base.FollowUpEngine, here hf on a tiny random Llama): the
k-turn loop hands the engine the whole run in one call, each episode's next turn joins the queue as
soon as its previous turn is back, and the records are those of the turn-by-turn loop."""

from __future__ import annotations

import pytest

from harness.data import Problem
from harness.engines.base import FollowUpEngine, SamplingSettings
from harness.episodes import run_episodes
from harness.grading import get_grader
from harness.store import Journal
from harness.tasks import load_task

# One long problem, so that its later turns outgrow a context the short ones' fit in.
PROBLEMS = [Problem(f"p{i}", str(i), {"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) for i in range(4)]
PROBLEMS.append(Problem("long", "0", {"problem": "Add these numbers: " + "one, " * 80, "answer": "0"}))


class ByTurn:
    """The same engine seen through `chat` only, so the loop drives it one call per turn."""

    def __init__(self, engine):
        self.engine, self.name, self.model_name = engine, engine.name, engine.model_name
        self.calls = 0

    def chat(self, *args, **kwargs):
        self.calls += 1
        return self.engine.chat(*args, **kwargs)

    def describe(self):
        return self.engine.describe()


@pytest.fixture
def engine(varied_engine, monkeypatch):
    """Stop tokens the model emits early on some prompts, so turns end at different steps, and
    three rows, so turns queue; the context is cut to between the turn lengths (see PROBLEMS)."""
    task = load_task("math")
    from harness.episodes import conversation

    def length(problem, previous):
        return len(varied_engine.encode(conversation(task, problem, previous)))

    # Each later turn adds its answer (at most 10 tokens) and the correction prompt around it.
    added = length(PROBLEMS[0], [""]) - length(PROBLEMS[0], [])
    short, long = max(length(p, []) for p in PROBLEMS[:-1]), length(PROBLEMS[-1], [])
    assert short + 2 * (added + 10) < long + added  # short problems reach turn 3; the long one stops at 1
    free = varied_engine.chat([conversation(task, p, []) for p in PROBLEMS], SamplingSettings(max_new_tokens=10))
    stops = {free[0][0].token_ids[3], free[2][0].token_ids[6]}
    monkeypatch.setattr(varied_engine, "stop_ids", varied_engine.stop_ids | stops)
    monkeypatch.setattr(varied_engine, "batch_size", 3)
    monkeypatch.setattr(varied_engine.model.config, "max_position_embeddings", long + added)
    return varied_engine


def run(engine, tmp_path, name: str, settings: SamplingSettings):
    journal = Journal(tmp_path / f"{name}.jsonl")
    episodes = run_episodes(
        load_task("math"), PROBLEMS, engine, get_grader("math"), turns=3, samples=2, settings=settings, journal=journal
    )
    return [e.record() for e in episodes], journal.replay()


@pytest.mark.parametrize(
    "settings",
    [SamplingSettings(max_new_tokens=10), SamplingSettings(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=5)],
    ids=["greedy", "sampled"],
)
def test_one_call_with_follow_ups_gives_the_turn_by_turn_records(engine, tmp_path, settings, monkeypatch):
    assert isinstance(engine, FollowUpEngine)
    calls = []
    real = engine.chat_with_follow_ups
    monkeypatch.setattr(engine, "chat_with_follow_ups", lambda *a, **k: calls.append(1) or real(*a, **k))
    ours, events = run(engine, tmp_path, "follow-ups", settings)
    assert len(calls) == 1
    by_turn = ByTurn(engine)
    theirs, _ = run(by_turn, tmp_path, "by-turn", settings)
    assert ours == theirs and by_turn.calls == 3
    # The run is not trivial: the long problem's episodes are cut short and the others have 3 turns.
    assert {len(r["turns"]) for r in ours} == {1, 3} and all(r.get("skipped") for r in ours if r["id"] == "long")
    if not settings.greedy:
        return  # sampled turns rarely draw the stop tokens, so they all end at the same length
    # Greedy turns end at different lengths; and there was no barrier: some episode's turn 2 was
    # back before another episode's turn 1.
    assert len({t["completion_tokens"] for r in ours for t in r["turns"]}) > 1
    generated = [(e["id"], e["sample"], e["turn"]) for e in events if "response" in e]
    assert min(i for i, g in enumerate(generated) if g[2] == 1) < max(i for i, g in enumerate(generated) if g[2] == 0)


def test_a_resumed_run_generates_only_the_missing_turns(engine, tmp_path):
    settings = SamplingSettings(max_new_tokens=10, temperature=1.0, seed=3)
    whole, events = run(engine, tmp_path, "whole", settings)
    # Keep the first half of the journal (some turn-1, some later turns), then run again over it.
    kept = events[: len(events) // 2]
    Journal(tmp_path / "resumed.jsonl").append(kept)
    prompts = []
    real = engine.chat_with_follow_ups

    def counting(conversations, settings, on_done, seeds):
        prompts.extend(conversations)

        def done(index, completions):
            follow_up = on_done(index, completions)
            if follow_up is not None:
                prompts.append(follow_up[0])
            return follow_up

        return real(conversations, settings, done, seeds)

    engine.chat_with_follow_ups = counting
    try:
        resumed, _ = run(engine, tmp_path, "resumed", settings)  # over the kept half of the journal
    finally:
        del engine.chat_with_follow_ups
    assert resumed == whole
    already = sum("response" in e for e in kept)
    assert len(prompts) == sum("response" in e for e in events) - already
