"""From graded two-turn episodes to token tensors with one mask per attempt.

Rollouts are the harness's own episodes (`harness.episodes.run_episodes`, sampled through the engine
interface and graded by the task's grader). The trainer must score each attempt exactly as it was
sampled: y1's tokens after the turn-1 prompt the engine fed the model, y2's tokens after the turn-2
prompt it fed. At turn 2 the engine rendered y1 as text, so the turn-2 prompt holds a
re-tokenisation of y1.

An attempt's tokens are the ids the engine sampled (`Turn.token_ids`), the end-of-turn token
included when the model stopped (the model chose it), and each prompt is the ids the engine fed
(`Turn.prompt_token_ids`); hf and vLLM return both. Where an engine returns only text, the prompts
are rendered and tokenised here and the attempts re-tokenised, which can, rarely, split the same
string differently.

Each episode is then one row (x, y1, p, y2) when that row's prefix before y2 is token for token the
turn-2 prompt the model saw: the common case, where the sampled y1 re-tokenises to itself and the
template writes, after y1, the same end-of-turn token the model sampled (kept once, as y1's). When
it is not (the model sampled a non-canonical split, a special token the decoder drops, another stop
token, or the chat template rewrites earlier turns), the episode becomes two rows, (x, y1) and
(turn-2 prompt, y2), each exact, at the cost of scoring the prompt twice. Template text and the
correction instruction are never trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from harness.episodes import Episode, Turn, conversation
from harness.errors import HarnessError
from harness.tasks import Task

PROMPT, ATTEMPT1, ATTEMPT2 = 0, 1, 2


@dataclass(frozen=True)
class Row:
    """One token sequence to score and which attempt each token belongs to."""

    input_ids: list[int]
    attempt: list[int]  # per token: PROMPT, ATTEMPT1 or ATTEMPT2


@dataclass(frozen=True)
class SequenceBatch:
    """Right-padded rows; masks are aligned with the predicted tokens input_ids[:, 1:]."""

    input_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, T]
    mask1: torch.Tensor  # [R, T-1] float, 1 on attempt-1 tokens
    mask2: torch.Tensor  # [R, T-1] float, 1 on attempt-2 tokens
    episode: torch.Tensor  # [R] long: the episode each row belongs to (one or two rows per episode)

    def rows(self, start: int, stop: int) -> SequenceBatch:
        fields = (self.input_ids, self.attention_mask, self.mask1, self.mask2, self.episode)
        return SequenceBatch(*(t[start:stop] for t in fields))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize_episode(
    task: Task, episode: Episode, render: Callable[[list], str], tokenizer, stop_ids: set[int]
) -> list[Row]:
    """The rows of one two-turn episode: [(x, y1, p, y2)], or [(x, y1), (turn-2 prompt, y2)]."""
    if len(episode.turns) != 2:
        raise HarnessError(f"SCoRe trains two-turn episodes; episode {episode.problem.id} has {len(episode.turns)}")
    y1, y2 = episode.turns[0], episode.turns[1]

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def attempt_ids(turn: Turn) -> list[int]:
        if turn.token_ids is not None:
            return list(turn.token_ids)
        stopped = turn.finish_reason == "stop" and tokenizer.eos_token_id is not None
        return encode(turn.response) + ([tokenizer.eos_token_id] if stopped else [])

    prompt1 = render(conversation(task, episode.problem, []))
    prompt2 = render(conversation(task, episode.problem, [y1.response]))
    first, second = attempt_ids(y1), attempt_ids(y2)
    # What the engine fed the model at turns 1 and 2: its own prompt ids where it returned them.
    seen1 = list(y1.prompt_token_ids or encode(prompt1))
    seen2 = list(y2.prompt_token_ids or encode(prompt2))

    start = prompt2.find(y1.response, len(prompt1)) if prompt2.startswith(prompt1) else -1
    if start >= 0:
        between = encode(prompt2[start + len(y1.response) :])
        if first and first[-1] in stop_ids and between[:1] == first[-1:]:
            between = between[1:]  # the template's end-of-turn token is the one y1 sampled: hold it once
        before = seen1 + encode(prompt2[len(prompt1) : start])
        if before + first + between == seen2:
            labels = [PROMPT] * len(before) + [ATTEMPT1] * len(first) + [PROMPT] * len(between)
            return [Row(seen2 + second, labels + [ATTEMPT2] * len(second))]
    return [
        Row(seen1 + first, [PROMPT] * len(seen1) + [ATTEMPT1] * len(first)),
        Row(seen2 + second, [PROMPT] * len(seen2) + [ATTEMPT2] * len(second)),
    ]


def collate(episodes: Sequence[list[Row]], pad_id: int = 0) -> SequenceBatch:
    """All rows of the episodes, in episode order, right-padded into one batch."""
    rows = [(index, row) for index, episode_rows in enumerate(episodes) for row in episode_rows]
    width = max(len(row.input_ids) for _, row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), PROMPT, dtype=torch.long)
    for r, (_, row) in enumerate(rows):
        n = len(row.input_ids)
        input_ids[r, :n] = torch.tensor(row.input_ids)
        attention[r, :n] = 1
        labels[r, :n] = torch.tensor(row.attempt)
    targets = labels[:, 1:]
    episode = torch.tensor([index for index, _ in rows], dtype=torch.long)
    return SequenceBatch(input_ids, attention, (targets == ATTEMPT1).float(), (targets == ATTEMPT2).float(), episode)


def trimmed(batch: SequenceBatch) -> SequenceBatch:
    """The batch cut to its longest sequence, so a micro-batch of short rows computes no padding."""
    width = int(batch.attention_mask.sum(dim=1).max())
    return SequenceBatch(
        batch.input_ids[:, :width],
        batch.attention_mask[:, :width],
        batch.mask1[:, : width - 1],
        batch.mask2[:, : width - 1],
        batch.episode,
    )


def by_length(batch: SequenceBatch) -> SequenceBatch:
    """The rows longest first, so each micro-batch holds rows of similar length and `trimmed` cuts its
    padding; rows keep their episode index, so KL sums and advantages are unchanged."""
    order = torch.argsort(batch.attention_mask.sum(dim=1), descending=True, stable=True)
    fields = (batch.input_ids, batch.attention_mask, batch.mask1, batch.mask2, batch.episode)
    return SequenceBatch(*(t[order] for t in fields))
