"""No turn barrier on an engine that takes requests as they come (base.RequestEngine, here the openai
backend against a scripted server on 127.0.0.1): an episode's next turn goes out as soon as its own
previous turn is back, with the same records as the turn-by-turn loop, and a resume does only the
missing work."""

from __future__ import annotations

import re
import threading
import time

import pytest

from harness.data import Problem
from harness.engines.base import RequestEngine, SamplingSettings
from harness.engines.openai import OpenAIEngine
from harness.episodes import run_episodes
from harness.errors import HarnessError
from harness.grading import get_grader
from harness.store import Journal
from harness.tasks import load_task
from tests.fake_openai_server import FakeOpenAIServer

# "TOO_LONG" in a problem makes the fake server answer its context error, so p3 is skipped at turn 1.
PROBLEMS = [Problem(f"p{i}", str(i), {"problem": f"Problem number {i}.", "answer": str(i)}) for i in range(3)]
PROBLEMS.append(Problem("p3", "3", {"problem": "Problem number 3. TOO_LONG", "answer": "3"}))
SETTINGS = SamplingSettings(max_new_tokens=8, seed=7)


class ScriptedServer(FakeOpenAIServer):
    """Answers wrong at turn 1 and right from turn 2 on, after a delay chosen per (problem, turn),
    and keeps a timeline: when each request came in and when its answer went out.

    `hold` makes the answers of a (problem, turn) wait until given counts of other (problem, turn)
    requests have come in (or HOLD_TIMEOUT passes), so an ordering is tested by events, not by how
    fast a loaded machine runs the client."""

    HOLD_TIMEOUT = 30.0

    def __init__(
        self,
        delays: dict[tuple[int, int], float] | None = None,
        hold: dict[tuple[int, int], dict[tuple[int, int], int]] | None = None,
        **options,
    ):
        super().__init__(**options)
        self.delays = delays or {}
        self.hold = hold or {}
        self.timeline: list[dict] = []
        self._arrived: dict[tuple[int, int], int] = {}
        self._arrival = threading.Condition()

    def answer(self, body: dict) -> dict:
        received = time.monotonic()
        problem = int(re.search(r"Problem number (\d+)", body["messages"][0]["content"]).group(1))
        turn = sum(m["role"] == "assistant" for m in body["messages"]) + 1
        with self._arrival:
            self._arrived[(problem, turn)] = self._arrived.get((problem, turn), 0) + 1
            self._arrival.notify_all()
            needed = self.hold.get((problem, turn), {})
            self._arrival.wait_for(
                lambda: all(self._arrived.get(k, 0) >= n for k, n in needed.items()), self.HOLD_TIMEOUT
            )
        time.sleep(self.delays.get((problem, turn), 0.0))
        out = super().answer(body)
        given = problem if turn > 1 else 99
        text = f"turn {turn} seed={body['seed']}. Final Answer: The final answer is ${given}$. I hope it is correct."
        out["choices"][0]["message"]["content"] = text
        with self._lock:
            self.timeline.append({"problem": problem, "turn": turn, "received": received, "answered": time.monotonic()})
        return out

    def first(self, what: str, problem: int, turn: int) -> float:
        """The earliest `what` ("received" or "answered") among the requests of (problem, turn)."""
        return min(e[what] for e in self.timeline if (e["problem"], e["turn"]) == (problem, turn))

    def last(self, what: str, problem: int, turn: int) -> float:
        return max(e[what] for e in self.timeline if (e["problem"], e["turn"]) == (problem, turn))


class TurnByTurn:
    """The same engine without `submit`: what run_episodes does for an engine that only batches."""

    def __init__(self, engine: OpenAIEngine):
        self.name, self.model_name = engine.name, engine.model_name
        self.chat, self.describe = engine.chat, engine.describe


def _run(engine, turns=3, samples=1, problems=PROBLEMS, grader=None, **options):
    return run_episodes(
        load_task("math"),
        problems,
        engine,
        grader or get_grader("math"),
        turns=turns,
        samples=samples,
        settings=SETTINGS,
        **options,
    )


def test_an_episode_goes_on_to_turn_2_before_the_slowest_turn_1_answer_is_back():
    # p0's turn 1 is answered only once both samples of p1 and p2 have asked their turn 2 (or after
    # 30 s, when the assertion below fails): without a barrier they ask it while p0's turn 1 is still
    # pending. The turn-by-turn loop, against a p0 that just takes 1.5 s, asks it only afterwards.
    slow = {(0, 1): 1.5}
    with ScriptedServer(hold={(0, 1): {(1, 2): 2, (2, 2): 2}}) as server:
        engine = OpenAIEngine.from_server(server.base_url, concurrency=8)
        assert isinstance(engine, RequestEngine) and not isinstance(TurnByTurn(engine), RequestEngine)
        pipelined = _run(engine, samples=2)
    with ScriptedServer(slow) as by_turn_server:
        by_turn = _run(TurnByTurn(OpenAIEngine.from_server(by_turn_server.base_url, concurrency=8)), samples=2)
    for fast in (1, 2):
        assert server.last("received", fast, 2) < server.first("answered", 0, 1)
        assert by_turn_server.first("received", fast, 2) > by_turn_server.last("answered", 0, 1)
    records = [e.record() for e in pipelined]
    assert records == [e.record() for e in by_turn]
    # Wrong at turn 1, right at turns 2 and 3 (ScriptedServer); p3 skipped at turn 1 by its context error.
    assert [[t["correct"] for t in r["turns"]] for r in records] == [[False, True, True]] * 6 + [[]] * 2
    assert records[6]["skipped"] == "turn 1: prompt longer than the model's context"
    # Each sample drew its own seed (the fake server echoes it), the same one on both paths.
    assert records[0]["turns"][0]["response"] != records[1]["turns"][0]["response"]


def test_at_most_concurrency_requests_are_in_flight_and_a_freed_slot_goes_to_the_same_episode():
    with ScriptedServer() as server:
        _run(OpenAIEngine.from_server(server.base_url, concurrency=1), turns=2, samples=2, problems=PROBLEMS[:2])
    assert server.max_in_flight == 1
    # Depth first: each episode's turns back to back (p, sample 0 then 1), the prefix still cached.
    assert [(e["problem"], e["turn"]) for e in server.timeline] == [(0, 1), (0, 2)] * 2 + [(1, 1), (1, 2)] * 2


def test_grading_takes_what_came_back_in_batches_and_grades_every_turn_once():
    class SlowGrader:
        def __init__(self):
            self.inner, self.batches = get_grader("math"), []

        def grade(self, items):
            self.batches.append(len(items))
            time.sleep(0.3)
            return self.inner.grade(items)

    grader = SlowGrader()
    with ScriptedServer() as server:
        episodes = _run(OpenAIEngine.from_server(server.base_url, concurrency=8), samples=2, grader=grader)
    # 3 scored problems x 2 samples x 3 turns; the skipped p3 has nothing to grade.
    assert sum(grader.batches) == 18
    assert len(grader.batches) < 18  # some call took several turns: completions piled up while it ran
    assert all(t.correct is not None for e in episodes for t in e.turns)


def test_a_failed_request_stops_new_ones_saves_those_in_flight_and_a_resume_matches(tmp_path):
    # The first request to arrive fails at once (400, not retried); the two others are answered
    # 1 s later, are saved, and are not followed by a turn 2.
    journal = Journal(tmp_path / "journal.jsonl")
    problems = PROBLEMS[:3]
    with ScriptedServer({(i, 1): 1.0 for i in range(3)}, fail_first=[400]) as failing:
        engine = OpenAIEngine.from_server(failing.base_url, concurrency=8)
        with pytest.raises(HarnessError, match="rejected a request"):
            _run(engine, problems=problems, journal=journal)
    saved = [e for e in journal.replay() if "response" in e]
    assert [e["turn"] for e in saved] == [0, 0]
    with ScriptedServer() as server:
        resumed = _run(OpenAIEngine.from_server(server.base_url), problems=problems, journal=journal)
    # 3 problems x 3 turns: the resume asks only for the 7 the journal lacks.
    done_before = {(int(e["id"][1:]), e["turn"] + 1) for e in saved}
    asked = {(e["problem"], e["turn"]) for e in server.timeline}
    assert len(server.timeline) == 7 and not asked & done_before
    with ScriptedServer() as clean:
        uninterrupted = _run(OpenAIEngine.from_server(clean.base_url), problems=problems)
    assert [e.record() for e in resumed] == [e.record() for e in uninterrupted]


def test_turns_generated_but_not_graded_before_a_crash_are_graded_without_asking_again(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    with ScriptedServer() as server:
        first = _run(OpenAIEngine.from_server(server.base_url), journal=journal)
    generated_only = [e for e in journal.replay() if "grade" not in e]
    journal.path.unlink()
    journal.append(generated_only)
    with ScriptedServer() as server:
        again = _run(OpenAIEngine.from_server(server.base_url), journal=journal)
    assert server.timeline == []
    assert [e.record() for e in again] == [e.record() for e in first]


def test_progress_counts_every_turn_and_its_tokens_once():
    class Recording:
        def __init__(self):
            self.steps, self.lock = {}, threading.Lock()

        def step(self, description, total):
            from contextlib import contextmanager

            @contextmanager
            def running():
                counts = self.steps.setdefault(description, {"total": total, "done": 0, "tokens": 0})

                def advance(n=1, tokens=0):
                    with self.lock:
                        counts["done"] += n
                        counts["tokens"] += tokens

                yield advance

            return running()

    progress = Recording()
    with ScriptedServer() as server:
        _run(OpenAIEngine.from_server(server.base_url), progress=progress)
    # 3 episodes x 3 turns generated, 3 tokens each (the fake server's usage); p3's 3 turns never
    # come but count as done, as do its 3 grades.
    assert progress.steps["turns 1-3: generating"] == {"total": 12, "done": 12, "tokens": 27}
    assert progress.steps["turns 1-3: grading"] == {"total": 12, "done": 12, "tokens": 0}


def test_a_grader_that_fails_fails_the_run_after_every_generated_turn_is_saved(tmp_path):
    class Broken:
        def grade(self, items):
            raise RuntimeError("grader broke")

    journal = Journal(tmp_path / "journal.jsonl")
    with ScriptedServer() as server, pytest.raises(RuntimeError, match="grader broke"):
        _run(OpenAIEngine.from_server(server.base_url), problems=PROBLEMS[:2], grader=Broken(), journal=journal)
    assert len([e for e in journal.replay() if "response" in e]) == 6  # 2 problems x 3 turns


def test_any_engine_with_submit_is_pipelined_and_keeps_token_ids_when_asked():
    """The loop asks for the capability, not the backend: a bare engine with `submit` and
    `concurrency` is driven per episode, and its token ids reach the Turn only with keep_token_ids."""
    from concurrent.futures import Future

    from harness.engines.base import Completion

    class Submitting:
        name = model_name = "submitting"
        concurrency = 2

        def __init__(self):
            self.sent = []

        def chat(self, conversations, settings, on_done=None, seeds=None):
            raise AssertionError("an engine with submit is never sent a batch")

        def submit(self, conversation, settings, seed):
            self.sent.append(len(conversation))
            future = Future()
            future.set_result([Completion("\\boxed{1}", 5, 2, "stop", token_ids=(7, 8), prompt_token_ids=(1, 2, 3))])
            return future

        def describe(self):
            return {"backend": self.name}

    for keep in (True, False):
        engine = Submitting()
        (episode,) = _run(engine, turns=2, problems=PROBLEMS[1:2], keep_token_ids=keep)
        assert engine.sent == [1, 3]  # turn 1, then turn 2 with the attempt and the instruction
        assert [t.correct for t in episode.turns] == [True, True]
        assert [(t.token_ids, t.prompt_token_ids) for t in episode.turns] == (
            [((7, 8), (1, 2, 3))] * 2 if keep else [(None, None)] * 2
        )


def test_ctrl_c_stops_a_run_at_once_while_requests_are_in_flight(tmp_path):
    """Ctrl-C with requests in flight on a slow server: the run exits with the resume command at once,
    not when the server answers. Before the request threads were daemons, the interpreter's exit
    joined them, so an interrupted run waited for every request in flight (60 s here)."""
    import signal

    from tests.conftest import start_cli

    with FakeOpenAIServer(delay=60) as server:
        args = ["run", "--task", "arithmetic", "--limit", "4", "--backend", "openai", "--base-url", server.base_url]
        args += ["--model", "fake-model", "--output-dir", str(tmp_path), "--run-name", "r"]
        proc = start_cli(args, env={"OPENAI_API_KEY": "x"})
        deadline = time.monotonic() + 60
        while server.in_flight < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.in_flight == 4
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        waited = time.monotonic() - interrupted
    assert proc.returncode == 130, stderr
    assert "Resume with:" in stderr and "Traceback" not in stderr
    assert waited < 20, f"exited {waited:.0f} s after Ctrl-C; the server answers after 60 s"
