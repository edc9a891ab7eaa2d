"""The k-turn self-correction loop.

Turn 1 asks the task's question; each later turn shows the model its own previous attempt and the
task's correction instruction, with no outside feedback (intrinsic self-correction). Every turn is
one batched engine call over all episodes still in play (problems x samples), so a run costs k
large generation calls. Because turn t+1 never depends on the grade of turn t, turn t is graded in
a background thread while turn t+1 generates.

With a Journal, each generated and each graded turn is saved as soon as it exists, and a restarted
run replays the journal and does only the work that is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from harness.data import Problem
from harness.engines.base import PROMPT_TOO_LONG, Completion, Conversation, Engine, SamplingSettings
from harness.grading import Grader
from harness.grading.reasoning import THINK_CLOSE, THINK_OPEN, without_thinking
from harness.progress import Progress, SilentProgress
from harness.store import Journal
from harness.tasks import Task

# Turn t samples with seed + t * TURN_SEED_STRIDE, so turns draw independent random streams.
TURN_SEED_STRIDE = 1_000_003


def episode_seed(base: int, problem_id: str, sample: int, turn: int) -> int:
    """A seed of its own for each episode and turn, stable across resumes and batch layouts."""
    import hashlib

    digest = hashlib.sha256(f"{base}:{problem_id}:{sample}:{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31)


@dataclass
class Turn:
    response: str
    finish_reason: str
    completion_tokens: int
    extracted: str | None = None
    correct: bool | None = None  # None until graded
    detail: str | None = None
    # The ids the model was given and sampled (Completion.prompt_token_ids, .token_ids), kept in
    # memory only when run_episodes is asked to (the trainer); never saved.
    token_ids: tuple[int, ...] | None = field(default=None, repr=False)
    prompt_token_ids: tuple[int, ...] | None = field(default=None, repr=False)

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
    skipped: str | None = None  # why the episode was dropped (e.g. its prompt outgrew the context)

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem.id, self.sample)

    def record(self, keep_fields: Sequence[str] = ()) -> dict[str, Any]:
        """The samples.jsonl object for this episode."""
        out: dict[str, Any] = {"id": self.problem.id, "sample": self.sample, "answer": self.problem.answer}
        out.update({k: self.problem.fields.get(k) for k in keep_fields})
        if self.skipped:
            out["skipped"] = self.skipped
        out["turns"] = [t.as_dict() for t in self.turns]
        return out


def conversation(task: Task, problem: Problem, previous: Sequence[str]) -> Conversation:
    """Chat messages for the next turn, given the model's previous attempts in order."""
    messages: Conversation = []
    if task.prompts.system:
        messages.append({"role": "system", "content": task.prompts.system})
    messages.append({"role": "user", "content": task.first_prompt(problem.fields)})
    for attempt in previous:
        messages.append({"role": "assistant", "content": shown_attempt(attempt, task.prompts.previous_thinking)})
        messages.append({"role": "user", "content": task.correction_prompt(problem.fields)})
    return messages


def shown_attempt(response: str, previous_thinking: str) -> str:
    """An earlier attempt as the next turn's conversation holds it (Prompts.previous_thinking)."""
    if previous_thinking == "drop":
        return without_thinking(response)
    if previous_thinking == "keep":
        return response.replace(THINK_OPEN, "").replace(THINK_CLOSE, "")
    return response


def _restore(episodes: list[Episode], events: list[dict]) -> None:
    """Rebuild episode state from journal events (generation and grade lines, any order of turns)."""
    by_key = {e.key: e for e in episodes}
    for event in events:
        episode = by_key.get((event["id"], event["sample"]))
        if episode is None:
            continue
        turn = event["turn"]
        if "response" in event:
            if event["finish_reason"] == PROMPT_TOO_LONG:
                episode.skipped = _too_long(turn)
            elif turn == len(episode.turns):
                episode.turns.append(Turn(event["response"], event["finish_reason"], event["completion_tokens"]))
        elif turn < len(episode.turns):
            grade = event["grade"]
            episode.turns[turn].extracted = grade["extracted"]
            episode.turns[turn].correct = grade["correct"]
            episode.turns[turn].detail = grade.get("detail")


def journal_events(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The journal lines that rebuild a samples.jsonl record: a finished run is reopened (to add turns,
    problems or samples) by writing its records back as a journal, which `run_episodes` replays."""
    key = {"id": record["id"], "sample": record["sample"]}
    events: list[dict[str, Any]] = []
    for t, turn in enumerate(record["turns"]):
        generated = {k: turn[k] for k in ("response", "finish_reason", "completion_tokens")}
        grade = {"extracted": turn["extracted"], "correct": turn["correct"], "detail": turn.get("detail")}
        events += [{**key, "turn": t, **generated}, {**key, "turn": t, "grade": grade}]
    if record.get("skipped"):
        skipped = len(record["turns"])
        events.append(
            {**key, "turn": skipped, "response": "", "finish_reason": PROMPT_TOO_LONG, "completion_tokens": 0}
        )
    return events


def _too_long(turn: int) -> str:
    return f"turn {turn + 1}: prompt longer than the model's context"


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
    journal: Journal | None = None,
    keep_token_ids: bool = False,
) -> list[Episode]:
    """Drive every problem through `turns` turns, `samples` independent episodes each.

    `keep_token_ids` keeps each turn's prompt and completion token ids on its Turn (the trainer
    scores them); an evaluation run does not keep them, as it never needs them."""
    progress = progress or SilentProgress()
    episodes = [Episode(p, s) for p in problems for s in range(samples)]
    if journal is not None:
        _restore(episodes, journal.replay())
    save = journal.append if journal is not None else (lambda events: None)

    def grade_turn(t: int) -> None:
        todo = [e for e in episodes if len(e.turns) > t and e.turns[t].correct is None]
        if not todo:
            return
        with progress.step(f"turn {t + 1}/{turns}: grading", len(todo)) as advance:
            verdicts = grader.grade([(e.turns[t].response, e.problem) for e in todo])
            advance(len(todo))
        for episode, verdict in zip(todo, verdicts):
            episode.turns[t].extracted, episode.turns[t].correct = verdict.extracted, verdict.correct
            episode.turns[t].detail = verdict.detail
        save(
            {
                "id": e.problem.id,
                "sample": e.sample,
                "turn": t,
                "grade": {
                    "extracted": e.turns[t].extracted,
                    "correct": e.turns[t].correct,
                    "detail": e.turns[t].detail,
                },
            }
            for e in todo
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="grading") as grading:
        pending_grades: list[Future] = []
        for t in range(turns):
            todo = [e for e in episodes if e.skipped is None and len(e.turns) == t]
            if todo:
                convs = [conversation(task, e.problem, [x.response for x in e.turns]) for e in todo]
                turn_settings = replace(settings, n=1, seed=settings.seed + t * TURN_SEED_STRIDE)
                with progress.step(f"turn {t + 1}/{turns}: generating", len(todo)) as advance:

                    def done(i: int, completions: list[Completion], t=t, todo=todo, advance=advance) -> None:
                        _record_generation(todo[i], t, completions[0], save, keep_token_ids)
                        advance(1, tokens=completions[0].completion_tokens)

                    seeds = [episode_seed(settings.seed, e.problem.id, e.sample, t) for e in todo]
                    engine.chat(convs, turn_settings, on_done=done, seeds=seeds)
            pending_grades.append(grading.submit(grade_turn, t))
        for future in pending_grades:
            future.result()
    return episodes


def _record_generation(episode: Episode, t: int, completion: Completion, save, keep_token_ids: bool) -> None:
    save(
        [
            {
                "id": episode.problem.id,
                "sample": episode.sample,
                "turn": t,
                "response": completion.text,
                "finish_reason": completion.finish_reason,
                "completion_tokens": completion.completion_tokens,
            }
        ]
    )
    if completion.finish_reason == PROMPT_TOO_LONG:
        episode.skipped = _too_long(t)
    else:
        episode.turns.append(
            Turn(
                completion.text,
                completion.finish_reason,
                completion.completion_tokens,
                token_ids=completion.token_ids if keep_token_ids else None,
                prompt_token_ids=completion.prompt_token_ids if keep_token_ids else None,
            )
        )
