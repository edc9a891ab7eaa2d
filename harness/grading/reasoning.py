"""Reasoning models' thinking: `<think> ... </think>` before the answer (DeepSeek-R1 distills, Qwen3, ...).

Graders read only what follows the thinking, so an answer tried out while thinking is never graded,
and a response cut off inside its thinking states no answer. A model that never writes the tags is
unaffected: its whole response is the answer part.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def answer_part(response: str) -> str | None:
    """The text after the thinking; None when the thinking never closed (the response states nothing).

    Templates that open the thinking in the prompt (R1 distills put `<think>` after the assistant
    header) give responses with only the closing tag; the answer is still what follows it.
    """
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE) :]
    if THINK_OPEN in response:
        return None
    return response


def without_thinking(response: str) -> str:
    """The response with its thinking removed, as templates that drop it from earlier turns show it."""
    part = answer_part(response)
    return "" if part is None else part.lstrip()
