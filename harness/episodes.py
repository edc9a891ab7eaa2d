"""The k-turn self-correction loop.

Turn 1 asks the task's question; each later turn shows the model its own previous attempt and the
task's correction instruction, with no outside feedback (intrinsic self-correction). Every turn is
one batched engine call over all episodes (problems x samples), so a run costs k large generation
calls, and every turn is graded before the next starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.data import Problem
from harness.engines.base import Conversation, Engine, SamplingSettings
from harness.grading import Grader
from harness.progress import Progress, SilentProgress
from harness.tasks import Task

# Turn t samples with seed + t * TURN_SEED_STRIDE, so turns draw independent random streams.
TURN_SEED_STRIDE = 1_000_003


@dataclass
class Turn:
    response: str
    extracted: str | None
    correct: bool
    finish_reason: str
    completion_tokens: int
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "response": self.response,
            "extracted": self.extracted,
            "correct": self.correct,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
        }
        if self.detail is not None:
            out["detail"] = self.detail
        return out


@dataclass
class Episode:
    problem: Problem
    sample: int
    turns: list[Turn] = field(default_factory=list)

    def record(self, keep_fields: Sequence[str] = ()) -> dict[str, Any]:
        """The samples.jsonl object for this episode."""
        out: dict[str, Any] = {"id": self.problem.id, "sample": self.sample, "answer": self.problem.answer}
        out.update({k: self.problem.fields.get(k) for k in keep_fields})
        out["turns"] = [t.as_dict() for t in self.turns]
        return out


def conversation(task: Task, problem: Problem, previous: Sequence[str]) -> Conversation:
    """Chat messages for the next turn, given the model's previous attempts in order."""
    messages: Conversation = []
    if task.prompts.system:
        messages.append({"role": "system", "content": task.prompts.system})
    messages.append({"role": "user", "content": task.first_prompt(problem.fields)})
    for attempt in previous:
        messages.append({"role": "assistant", "content": attempt})
        messages.append({"role": "user", "content": task.correction_prompt(problem.fields)})
    return messages


def run_episodes(
    task: Task,
    problems: Sequence[Problem],
    engine: Engine,
    grader: Grader,
    *,
    turns: int,
    samples: int,
    settings: SamplingSettings,
    progress: Progress | None = None,
) -> list[Episode]:
    """Drive every problem through `turns` turns, `samples` independent episodes each."""
    progress = progress or SilentProgress()
    episodes = [Episode(p, s) for p in problems for s in range(samples)]
    for t in range(turns):
        convs = [conversation(task, e.problem, [x.response for x in e.turns]) for e in episodes]
        turn_settings = replace(settings, n=1, seed=settings.seed + t * TURN_SEED_STRIDE)
        with progress.step(f"turn {t + 1}/{turns}: generating", len(convs)) as advance:
            completions = [c[0] for c in engine.chat(convs, turn_settings, on_progress=advance)]
        with progress.step(f"turn {t + 1}/{turns}: grading", len(convs)) as advance:
            verdicts = grader.grade([(c.text, e.problem) for c, e in zip(completions, episodes)])
            advance(len(verdicts))
        for episode, completion, verdict in zip(episodes, completions, verdicts):
            episode.turns.append(
                Turn(
                    response=completion.text,
                    extracted=verdict.extracted,
                    correct=verdict.correct,
                    finish_reason=completion.finish_reason,
                    completion_tokens=completion.completion_tokens,
                    detail=verdict.detail,
                )
            )
    return episodes
