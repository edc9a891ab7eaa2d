"""The k-turn loop: one batched engine call per turn, the model's own attempts fed back."""

import pytest

from harness.data import Problem
from harness.engines.base import SamplingSettings
from harness.episodes import conversation, run_episodes
from harness.grading import get_grader
from harness.tasks import load_task
from tests.conftest import ScriptedEngine

PROBLEMS = [Problem(id=f"p{i}", answer=str(i), fields={"problem": f"Q{i}", "answer": str(i)}) for i in range(3)]


def test_conversation_alternates_attempts_and_the_correction_instruction():
    task = load_task("math")
    conv = conversation(task, PROBLEMS[0], ["first try", "second try"])
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in conv[1::2]][:2] == ["first try", "second try"]
    assert conv[2]["content"] == conv[4]["content"] == task.correction_prompt({})


def test_each_turn_is_one_batched_call_over_all_episodes():
    engine = ScriptedEngine(lambda conv: "The final answer is $1$. I hope it is correct.")
    episodes = run_episodes(
        load_task("math"),
        PROBLEMS,
        engine,
        get_grader("math"),
        turns=3,
        samples=2,
        settings=SamplingSettings(max_new_tokens=8),
    )
    assert len(engine.calls) == 3
    assert [len(call) for call in engine.calls] == [6, 6, 6]
    # Turn t sees 2t-1 messages: no oracle feedback, only its own attempts and the instruction.
    assert [len(call[0]) for call in engine.calls] == [1, 3, 5]
    assert [(e.problem.id, e.sample) for e in episodes] == [(f"p{i}", s) for i in range(3) for s in range(2)]
    assert [[t.correct for t in e.turns] for e in episodes if e.problem.id == "p1"] == [[True] * 3] * 2


def test_wrong_then_right_is_recorded_per_turn():
    def reply(conv):
        turn = (len(conv) + 1) // 2
        return "The final answer is $0$. I hope it is correct." if turn == 1 else "\\boxed{2}"

    (episode,) = run_episodes(
        load_task("math"),
        [PROBLEMS[2]],
        ScriptedEngine(reply),
        get_grader("math"),
        turns=2,
        samples=1,
        settings=SamplingSettings(max_new_tokens=8),
    )
    assert [(t.extracted, t.correct) for t in episode.turns] == [("0", False), ("2", True)]
    record = episode.record(["answer"])
    assert record["id"] == "p2" and record["sample"] == 0 and record["answer"] == "2"
    assert [t["correct"] for t in record["turns"]] == [False, True]


@pytest.mark.parametrize("turns", [1, 2])
def test_turn_count_is_respected(turns):
    engine = ScriptedEngine(lambda conv: "I do not know.")
    (episode,) = run_episodes(
        load_task("math"),
        PROBLEMS[:1],
        engine,
        get_grader("math"),
        turns=turns,
        samples=1,
        settings=SamplingSettings(max_new_tokens=8),
    )
    assert len(episode.turns) == turns
    assert episode.turns[0].extracted is None and not episode.turns[0].correct
