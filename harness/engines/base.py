"""The engine interface: chat conversations and sampling settings in, completions out.

Everything above this layer (tasks, the k-turn loop, grading, metrics, the trainer) sees only
these types, so it never knows which engine produced a completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = list[Message]
# Called as soon as all completions of one conversation are ready: (conversation index, completions).
# Callers use it to save work as it is produced and to show progress; engines call it from the
# thread that called `chat`.
DoneCallback = Callable[[int, list["Completion"]], None]

# Like DoneCallback, for engines that take follow-ups (FollowUpEngine): it may answer with the
# conversation's next turn and that turn's seed, which the engine queues at once as a new
# conversation (the next index).
FollowUp = Callable[[int, list["Completion"]], "tuple[Conversation, int] | None"]

# finish_reason of a conversation the engine did not run because its prompt alone fills the model's
# context window; its completion text is empty.
PROMPT_TOO_LONG = "prompt_too_long"


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    n: int = 1  # completions per conversation
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn), "length" (hit max_new_tokens) or PROMPT_TOO_LONG
    # The sampled token ids, the end-of-turn token included when the model stopped, and the prompt ids
    # the model was given; None where the engine cannot say (OpenAI-compatible servers return text).
    # The trainer scores exactly these ids rather than a re-tokenisation of the text, which can split
    # the same string differently.
    token_ids: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    prompt_token_ids: tuple[int, ...] | None = field(default=None, repr=False, compare=False)


def conversation_seeds(settings: SamplingSettings, count: int, seeds: Sequence[int] | None) -> list[int]:
    """Each conversation's sampling seed in a `chat` call: the caller's, else Engine.chat's default,
    `settings.seed` plus the conversation's position."""
    return list(seeds) if seeds else [settings.seed + i for i in range(count)]


class Engine(Protocol):
    """What every backend provides."""

    name: str
    model_name: str

    def chat(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: DoneCallback | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Return `settings.n` completions for each conversation, in input order.

        `seeds` gives each conversation its own sampling seed where the engine can honour one
        (vLLM, servers that accept `seed`), so identical conversations of different episodes
        still draw different samples, and a conversation draws the same samples whatever else
        shares its call. Without it, seeds derive from `settings.seed` and the position.
        """

    def describe(self) -> dict:
        """Engine facts for config.json (model path, dtype, device, ...)."""


@runtime_checkable
class RequestEngine(Engine, Protocol):
    """An engine that also takes conversations one at a time, as they come (a server).

    The k-turn loop asks for this capability, never for a backend: with it, each episode moves to
    its next turn as soon as its own previous turn is back, instead of every turn waiting for the
    slowest answer of the turn before. An engine that gains nothing from it (hf batches a turn over
    one KV cache) leaves it out and is driven one `chat` call per turn.
    """

    concurrency: int  # requests worth keeping in flight at once; callers submit no more than this

    def submit(self, conversation: Conversation, settings: SamplingSettings, seed: int) -> Future[list[Completion]]:
        """Start `settings.n` completions of one conversation (sampled with `seed`) and return at
        once; the future holds them, or the error that stopped them. Safe to call while earlier
        futures are pending."""


@runtime_checkable
class FollowUpEngine(Engine, Protocol):
    """An engine that generates from one queue in this process (hf, llamacpp) and takes a
    conversation's next turn while the rest of its batch is still running.

    The k-turn loop hands it a whole run in one call: as each episode's turn finishes, its next
    turn joins the queue, so rows stay busy until the last turn of the run, instead of draining at
    the end of every turn while the slowest answers finish.
    """

    def chat_with_follow_ups(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: FollowUp,
        seeds: Sequence[int],
    ) -> list[list[Completion]]:
        """As Engine.chat, and each conversation `on_done` answers with (conversation, seed) is
        generated too, under the next index; returns every conversation's completions, follow-ups
        included, in index order."""


class ChatThroughFollowUps:
    """`chat` for an engine that has `chat_with_follow_ups` (hf, llamacpp): the same call, no follow-ups."""

    def chat(
        self,
        conversations: Sequence[Conversation],
        settings: SamplingSettings,
        on_done: DoneCallback | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """See Engine.chat. Completion j of conversation i samples from its own stream, seeded by
        `seeds[i]` (default `settings.seed + i`) and j, whatever batch or slot it runs in."""
        seeds = conversation_seeds(settings, len(conversations), seeds)
        if on_done is None:
            return self.chat_with_follow_ups(conversations, settings, None, seeds)

        def done(index: int, completions: list[Completion]) -> None:
            on_done(index, completions)  # whatever a DoneCallback returns queues no follow-up

        return self.chat_with_follow_ups(conversations, settings, done, seeds)


def common_prefix_length(sequences: list[list[int]]) -> int:
    """The number of leading tokens all `sequences` share (the prompt ids an in-process engine can
    keep keys and values of: hf's slot decoder, llamacpp's slots)."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        token = sequences[0][i]
        if any(s[i] != token for s in sequences):
            return i
    return shortest
