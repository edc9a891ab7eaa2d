"""Draft tokens for the slot decoder, guessed from a row's own text (prompt lookup decoding).

When a row's last few tokens appeared earlier in its prompt or its completion, the tokens that
followed them there are a cheap guess at what comes next; the decoder feeds them with the row's
last token and keeps those the model would have chosen anyway (slots.py), so a forward can yield
several tokens a row. The guesses are good exactly where self-correction runs spend their tokens:
a second attempt mostly restates the first, which is in its prompt (replayed offline over the
embedded model's answers to 48 MATH-500 problems: its turn-2 answers, 2,530 tokens, would need 705
forwards with 4-token guesses; turn 1, which can copy only the problem and its own repetitions,
1,545 for 2,654 tokens). This is the
`prompt_lookup_num_tokens` of transformers' `generate` and vLLM's "ngram" speculative method, which
both work on one sequence or on their own scheduler; ours runs per row of the slot decoder.
"""

from __future__ import annotations

# Longest run of trailing tokens looked up; shorter runs are tried when it is not found.
MAX_NGRAM = 3


class PromptLookup:
    """A row's tokens so far and, for each run of 1..MAX_NGRAM tokens, where it last ended with a
    known next token."""

    def __init__(self, ids: list[int]):
        self.ids: list[int] = []
        self.last: list[dict[tuple[int, ...], int]] = [{} for _ in range(MAX_NGRAM)]
        self.extend(ids)

    def extend(self, tokens: list[int]) -> None:
        """Append tokens; each run that now has a next token is indexed under its end position."""
        for token in tokens:
            self.ids.append(token)
            end = len(self.ids) - 2  # the run ending here now has a known next token
            for n in range(1, min(MAX_NGRAM, end + 1) + 1):
                self.last[n - 1][tuple(self.ids[end - n + 1 : end + 1])] = end

    def draft(self, count: int) -> list[int]:
        """Up to `count` tokens that followed the latest earlier occurrence of the longest trailing run
        found; a continuation that reaches the end repeats (a row in a loop keeps looping). Empty
        when not even the last token occurred before."""
        if count <= 0:
            return []
        for n in range(min(MAX_NGRAM, len(self.ids)), 0, -1):
            end = self.last[n - 1].get(tuple(self.ids[-n:]))
            if end is not None:
                follow = self.ids[end + 1 : end + 1 + count]  # the whole tail when it is shorter
                return [follow[i % len(follow)] for i in range(count)]
        return []
