"""One call to an in-process engine (hf, llamacpp) as a queue of jobs that can grow while it runs.

Both engines decode from one queue, one job per completion, and refill a row as soon as it frees
up. This holds what they share: each conversation's prompt ids and seed, its jobs (each drawing
from its own seeded random stream), and its completions as they finish. The caller's `on_done`
may answer a finished conversation with the conversation's next turn (base.FollowUp): that turn
joins the queue at once, and each engine takes it ahead of what is waiting, where its previous
turn's keys and values are: hf moves its jobs to the front of its queue; llamacpp takes one into the
slot its turn left (with n > 1 samples the others wait in the queue). So the k-turn loop hands an
engine a whole run in one call and an episode's next turn starts while other episodes are still on
the turn before, instead of every turn waiting for the slowest answer of the previous one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from harness.engines.base import PROMPT_TOO_LONG, Completion, Conversation, FollowUp, SamplingSettings
from harness.engines.sampling import Job, row_generator

# (prompt ids, sampled ids, whether the row stopped on a stop token) -> the caller's Completion.
Complete = Callable[[list[int], list[int], bool], Completion]


class JobQueue:
    """The conversations of one engine call, their queued jobs and their completions.

    Job `key` is conversation * n + sample. A prompt of `limit` tokens or more is not queued: its
    completions are reported at once as PROMPT_TOO_LONG. Jobs of conversations added together are
    queued longest prompt first, so rows admitted together have similar lengths and pad little."""

    def __init__(
        self,
        settings: SamplingSettings,
        encode: Callable[[Conversation], list[int]],
        complete: Complete,
        limit: int | None,
        on_done: FollowUp | None,
    ):
        self.settings, self.encode, self.complete, self.limit, self.on_done = settings, encode, complete, limit, on_done
        self.queue: deque[Job] = deque()
        self.prompts: list[list[int]] = []
        self.seeds: list[int] = []
        self.results: list[list[Completion | None]] = []
        self._waiting: list[int] = []

    def add(self, conversations: Sequence[Conversation], seeds: Sequence[int]) -> None:
        n = self.settings.n
        start = len(self.prompts)
        # Every conversation is entered before any is reported, as a report can add more.
        for conversation, seed in zip(conversations, seeds):
            self.prompts.append(self.encode(conversation))
            self.seeds.append(seed)
            self.results.append([None] * n)
            self._waiting.append(n)
        jobs = []
        for index in range(start, len(self.prompts)):
            ids = self.prompts[index]
            for sample in range(n):
                if self.limit is not None and len(ids) >= self.limit:
                    self._finish(index, sample, Completion("", len(ids), 0, PROMPT_TOO_LONG, (), tuple(ids)))
                else:
                    jobs.append(Job(index * n + sample, ids, self._stream(index, sample)))
        jobs.sort(key=lambda job: -len(job.prompt))
        self.queue.extend(jobs)

    def finished(self, job: Job, tokens: list[int], stopped: bool) -> None:
        """The decoder's callback (sampling.Finished) as each job's row ends."""
        conversation, sample = divmod(job.key, self.settings.n)
        self._finish(conversation, sample, self.complete(self.prompts[conversation], tokens, stopped))

    def restart_streams(self) -> None:
        """Give every waiting job a fresh random stream (rows put back after a failed batch restart)."""
        for job in self.queue:
            if job.generator is not None:
                job.generator = self._stream(*divmod(job.key, self.settings.n))

    def _stream(self, index: int, sample: int):
        return None if self.settings.greedy else row_generator(self.seeds[index], sample)

    def _finish(self, conversation: int, sample: int, completion: Completion) -> None:
        self.results[conversation][sample] = completion
        self._waiting[conversation] -= 1
        if self._waiting[conversation] == 0 and self.on_done:
            follow_up = self.on_done(conversation, self.results[conversation])
            if follow_up is not None:
                self.add([follow_up[0]], [follow_up[1]])
