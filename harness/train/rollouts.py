"""From graded two-turn episodes to token tensors with one mask per attempt.

Rollouts are the harness's own episodes (`harness.episodes.run_episodes`, sampled through the engine
interface and graded by the task's grader). The engine returns text, not token ids, so the trainer
rebuilds each episode's token sequence from the same chat-template rendering the engine used
(`HFEngine.render`): the turn-2 prompt is split into the turn-1 prompt, attempt y1 and the template
text after it, and each piece is tokenised on its own so the tokens of y1 and y2 are exactly the
spans the masks mark. The end-of-turn token the model sampled to stop an attempt is part of the
attempt (the model chose it); template text and the correction instruction never are.

A limit of working from text: re-tokenising a decoded completion can, rarely, give ids other than
the sampled ones (the same string, a different split); the log-probabilities are then those of the
re-tokenised string. An engine that returned completion token ids would remove this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from harness.episodes import Episode, conversation
from harness.errors import HarnessError
from harness.tasks import Task

PROMPT, ATTEMPT1, ATTEMPT2 = 0, 1, 2


@dataclass(frozen=True)
class TokenizedEpisode:
    input_ids: list[int]
    attempt: list[int]  # per token: PROMPT, ATTEMPT1 or ATTEMPT2


@dataclass(frozen=True)
class SequenceBatch:
    """Right-padded sequences; masks are aligned with the predicted tokens input_ids[:, 1:]."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    mask1: torch.Tensor  # [B, T-1] float, 1 on attempt-1 tokens
    mask2: torch.Tensor  # [B, T-1] float, 1 on attempt-2 tokens

    def rows(self, start: int, stop: int) -> SequenceBatch:
        return SequenceBatch(*(t[start:stop] for t in (self.input_ids, self.attention_mask, self.mask1, self.mask2)))

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize_episode(
    task: Task, episode: Episode, render: Callable[[list], str], tokenizer, stop_ids: set[int]
) -> TokenizedEpisode:
    """Token ids of (x, y1, p, y2) and which attempt each token belongs to."""
    if len(episode.turns) != 2:
        raise HarnessError(f"SCoRe trains two-turn episodes; episode {episode.problem.id} has {len(episode.turns)}")
    y1, y2 = episode.turns[0], episode.turns[1]
    prompt1 = render(conversation(task, episode.problem, []))
    prompt2 = render(conversation(task, episode.problem, [y1.response]))
    start = prompt2.find(y1.response, len(prompt1)) if prompt2.startswith(prompt1) else -1
    if start < 0:
        raise HarnessError(
            "the chat template does not render turn 2 as turn 1 followed by the first attempt, so attempt "
            "tokens cannot be located; SCoRe training needs an append-only chat template"
        )
    ids: list[int] = []
    attempt: list[int] = []

    def add(text: str, label: int) -> None:
        if text:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids.extend(piece)
            attempt.extend([label] * len(piece))

    add(prompt1, PROMPT)
    add(prompt2[len(prompt1) : start], PROMPT)
    add(y1.response, ATTEMPT1)
    after_y1 = len(ids)
    add(prompt2[start + len(y1.response) :], PROMPT)
    if y1.finish_reason == "stop" and after_y1 < len(ids) and ids[after_y1] in stop_ids:
        attempt[after_y1] = ATTEMPT1  # the end-of-turn token the model sampled
    add(y2.response, ATTEMPT2)
    if y2.finish_reason == "stop" and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        attempt.append(ATTEMPT2)
    return TokenizedEpisode(ids, attempt)


def collate(episodes: Sequence[TokenizedEpisode], pad_id: int = 0) -> SequenceBatch:
    width = max(len(e.input_ids) for e in episodes)
    input_ids = torch.full((len(episodes), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(episodes), width), dtype=torch.long)
    labels = torch.full((len(episodes), width), PROMPT, dtype=torch.long)
    for row, e in enumerate(episodes):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(e.attempt)
    targets = labels[:, 1:]
    return SequenceBatch(input_ids, attention, (targets == ATTEMPT1).float(), (targets == ATTEMPT2).float())


def trimmed(batch: SequenceBatch) -> SequenceBatch:
    """The batch cut to its longest sequence, so a micro-batch of short rows computes no padding."""
    width = int(batch.attention_mask.sum(dim=1).max())
    return SequenceBatch(
        batch.input_ids[:, :width],
        batch.attention_mask[:, :width],
        batch.mask1[:, : width - 1],
        batch.mask2[:, : width - 1],
    )
