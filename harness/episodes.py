"""The k-turn self-correction loop.

Turn 1 asks the task's question; each later turn shows the model its own previous attempt and the
task's correction instruction, with no outside feedback (intrinsic self-correction). Because turn
t+1 never depends on the grade of turn t, grading runs in a background thread while generation goes on.

How generation is scheduled depends on what the engine can do, never on which engine it is:
- an engine that generates from one queue in this process and takes follow-ups (base.FollowUpEngine,
  e.g. hf) gets the whole run in one call: each episode's next turn joins its queue as soon as
  that episode's previous turn is back, so its rows stay busy across turns;
- an engine that takes requests as they come (base.RequestEngine, e.g. a server) gets each
  episode's next turn as soon as that episode's previous turn is back, with at most
  `engine.concurrency` requests in flight: no turn waits for the slowest answer of the turn before;
- any other engine gets one batched call per turn over all episodes still in play (problems x
  samples), so a run costs k large generation calls, and turn t is graded while turn t+1 generates.

With a Journal, each generated and each graded turn is saved as soon as it exists, and a restarted
run replays the journal and does only the work that is missing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from harness.data import Problem
from harness.engines.base import (
    PROMPT_TOO_LONG,
    Completion,
    Conversation,
    Engine,
    FollowUpEngine,
    RequestEngine,
    SamplingSettings,
)
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
    # The verdict before `score-eval regrade` ({extracted, correct[, detail]}), kept through an extension.
    previous: dict[str, Any] | None = None
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
        if self.previous is not None:
            out["previous"] = self.previous
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
            episode.turns[turn].previous = grade.get("previous")


def journal_events(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The journal lines that rebuild a samples.jsonl record: a finished run is reopened (to add turns,
    problems or samples) by writing its records back as a journal, which `run_episodes` replays."""
    key = {"id": record["id"], "sample": record["sample"]}
    events: list[dict[str, Any]] = []
    for t, turn in enumerate(record["turns"]):
        generated = {k: turn[k] for k in ("response", "finish_reason", "completion_tokens")}
        grade = {"extracted": turn["extracted"], "correct": turn["correct"], "detail": turn.get("detail")}
        if "previous" in turn:  # a regraded run's verdict before the regrade
            grade["previous"] = turn["previous"]
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
    loop = _Loop(task, grader, turns, settings, progress, save, keep_token_ids)
    if isinstance(engine, FollowUpEngine):
        _run_with_follow_ups(loop, episodes, engine)
    elif isinstance(engine, RequestEngine):
        _run_pipelined(loop, episodes, engine)
    else:
        _run_by_turn(loop, episodes, engine)
    return episodes


Save = Callable[[Iterable[dict[str, Any]]], None]


@dataclass(frozen=True)
class _Loop:
    """What both schedules of generation share: the run's settings and where its work goes."""

    task: Task
    grader: Grader
    turns: int
    settings: SamplingSettings
    progress: Progress
    save: Save
    keep_token_ids: bool

    def conversation(self, episode: Episode) -> Conversation:
        return conversation(self.task, episode.problem, [x.response for x in episode.turns])

    def turn_settings(self, t: int) -> SamplingSettings:
        return replace(self.settings, n=1, seed=self.settings.seed + t * TURN_SEED_STRIDE)

    def seed(self, episode: Episode, t: int) -> int:
        return episode_seed(self.settings.seed, episode.problem.id, episode.sample, t)

    def record(self, episode: Episode, t: int, completion: Completion) -> None:
        _record_generation(episode, t, completion, self.save, self.keep_token_ids)


def _run_by_turn(loop: _Loop, episodes: list[Episode], engine: Engine) -> None:
    """One batched engine call per turn over every episode still in play; turn t grades while turn
    t+1 generates."""
    turns, progress = loop.turns, loop.progress

    def grade_turn(t: int) -> None:
        todo = [(e, t) for e in episodes if len(e.turns) > t and e.turns[t].correct is None]
        if not todo:
            return
        with progress.step(f"turn {t + 1}/{turns}: grading", len(todo)) as advance:
            _grade(loop.grader, todo, loop.save)
            advance(len(todo))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="grading") as grading:
        pending_grades: list[Future] = []
        for t in range(turns):
            todo = [e for e in episodes if e.skipped is None and len(e.turns) == t]
            if todo:
                convs = [loop.conversation(e) for e in todo]
                with progress.step(f"turn {t + 1}/{turns}: generating", len(todo)) as advance:

                    def done(i: int, completions: list[Completion], t=t, todo=todo, advance=advance) -> None:
                        loop.record(todo[i], t, completions[0])
                        advance(1, tokens=completions[0].completion_tokens)

                    seeds = [loop.seed(e, t) for e in todo]
                    engine.chat(convs, loop.turn_settings(t), on_done=done, seeds=seeds)
            pending_grades.append(grading.submit(grade_turn, t))
        for future in pending_grades:
            future.result()


class _Continuous:
    """What both schedules without a turn barrier share: the episodes' missing turns, the progress
    steps, and what happens when one turn is back (save it, count it, queue it for grading)."""

    def __init__(self, loop: _Loop, episodes: list[Episode]):
        self.loop, self.turns = loop, loop.turns
        self.ungraded = [
            (e, t) for e in episodes for t in range(min(self.turns, len(e.turns))) if e.turns[t].correct is None
        ]
        self.to_generate = sum(self.missing(e) for e in episodes)
        self.waiting = deque(e for e in episodes if self.missing(e))

    def missing(self, e: Episode) -> int:
        return 0 if e.skipped is not None else max(0, self.turns - len(e.turns))

    @contextmanager
    def steps(self) -> Iterator[Callable[..., None]]:
        """Progress steps for generation and grading, and grading in the background; yields the
        generation step's `advance`. Every turn handed to `back` is graded before this ends."""
        span = f"turns 1-{self.turns}" if self.turns > 1 else "turn 1/1"
        with self.loop.progress.step(f"{span}: grading", len(self.ungraded) + self.to_generate) as graded:
            self.graded = graded
            self.grading = _BackgroundGrading(self.loop.grader, self.loop.save, graded)
            try:
                self.grading.add(self.ungraded)
                with self.loop.progress.step(f"{span}: generating", self.to_generate) as generated:
                    self.generated = generated
                    yield generated
            except BaseException:
                self.grading.close()
                raise
            error = self.grading.close()
            if error is not None:
                raise error

    def back(self, episode: Episode, completion: Completion) -> None:
        """One turn of `episode` is back: save it and queue it for grading."""
        t = len(episode.turns)
        self.loop.record(episode, t, completion)
        self.generated(1, tokens=completion.completion_tokens)
        if episode.skipped is None:
            self.grading.add([(episode, t)])
        else:  # the turns it will never have count as done
            self.generated(self.turns - t - 1)
            self.graded(self.turns - t)

    def next_turn(self, episode: Episode) -> tuple[Conversation, SamplingSettings, int]:
        t = len(episode.turns)
        return self.loop.conversation(episode), self.loop.turn_settings(t), self.loop.seed(episode, t)


def _run_with_follow_ups(loop: _Loop, episodes: list[Episode], engine: FollowUpEngine) -> None:
    """One engine call for the whole run: as each episode's turn is back, its next turn joins the
    engine's queue, and the engine's rows stay busy until the run's last turn (base.FollowUpEngine).
    The turns' settings differ only in their seed, which each conversation carries."""
    run = _Continuous(loop, episodes)
    started = list(run.waiting)
    by_index = list(started)  # the episode of each conversation of the call, follow-ups included

    def done(index: int, completions: list[Completion]) -> tuple[Conversation, int] | None:
        episode = by_index[index]
        run.back(episode, completions[0])
        if not run.missing(episode):
            return None
        by_index.append(episode)
        conversation, _, seed = run.next_turn(episode)
        return conversation, seed

    with run.steps():
        if started:
            firsts = [run.next_turn(e) for e in started]
            engine.chat_with_follow_ups([c for c, _, _ in firsts], firsts[0][1], done, [s for _, _, s in firsts])


def _run_pipelined(loop: _Loop, episodes: list[Episode], engine: RequestEngine) -> None:
    """Each episode goes on to its next turn as soon as its own previous turn is back.

    At most `engine.concurrency` requests are in flight. The slot an answer frees goes to the same
    episode's next turn first (a server that caches prefixes still holds that conversation), else to
    the next episode not yet started. After a failed request no new request goes out; the ones in
    flight are still awaited and saved, then the failure is raised.
    """
    run = _Continuous(loop, episodes)
    in_flight: dict[Future[list[Completion]], Episode] = {}
    failure: BaseException | None = None

    def submit(e: Episode) -> None:
        in_flight[engine.submit(*run.next_turn(e))] = e

    with run.steps():
        while run.waiting and len(in_flight) < max(1, engine.concurrency):
            submit(run.waiting.popleft())
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                episode = in_flight.pop(future)
                try:
                    completion = future.result()[0]
                except Exception as exc:  # noqa: BLE001 - raised once the requests in flight are saved
                    failure = failure or exc
                    continue
                run.back(episode, completion)
                if failure is None:
                    follow = episode if run.missing(episode) else run.waiting.popleft() if run.waiting else None
                    if follow is not None:
                        submit(follow)
        if failure is not None:  # inside the steps: a failed step gets no closing line
            raise failure


class _BackgroundGrading:
    """Grades turns on one background thread as they come back, in batches: each grader call takes
    every turn that arrived while the previous call ran, so a grader with a cost per call (sandboxes,
    a batch shared out over worker processes) is not called once per completion."""

    def __init__(self, grader: Grader, save: Save, advance: Callable[..., None]):
        self.grader, self.save, self.advance = grader, save, advance
        self._todo: list[tuple[Episode, int]] = []
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grading")
        self._running: Future | None = None  # the drain in progress; a failed one stays here

    def add(self, items: Sequence[tuple[Episode, int]]) -> None:
        with self._lock:
            self._todo += items
            if self._todo and self._running is None:
                self._running = self._thread.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._todo = self._todo, []
                if not batch:
                    self._running = None
                    return
            _grade(self.grader, batch, self.save)
            self.advance(len(batch))

    def close(self) -> BaseException | None:
        """Wait for every turn added so far to be graded; the grader's error, if it failed."""
        with self._lock:
            running = self._running
        error = running.exception() if running is not None else None
        self._thread.shutdown()
        return error


def _grade(grader: Grader, items: Sequence[tuple[Episode, int]], save: Save) -> None:
    """Grade (episode, turn) pairs in one grader call, set their verdicts and save them."""
    verdicts = grader.grade([(e.turns[t].response, e.problem) for e, t in items])
    for (episode, t), verdict in zip(items, verdicts):
        turn = episode.turns[t]
        turn.extracted, turn.correct, turn.detail = verdict.extracted, verdict.correct, verdict.detail
    save(
        {
            "id": e.problem.id,
            "sample": e.sample,
            "turn": t,
            "grade": {"extracted": e.turns[t].extracted, "correct": e.turns[t].correct, "detail": e.turns[t].detail},
        }
        for e, t in items
    )


def _record_generation(episode: Episode, t: int, completion: Completion, save: Save, keep_token_ids: bool) -> None:
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
