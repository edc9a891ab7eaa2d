"""Graders, by name. A task's YAML names its grader; code registers graders, not tasks.

A grader turns (response, problem) pairs into Verdicts. It takes a whole batch so that an
implementation can spread the work over processes; callers never grade one item at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from harness.errors import HarnessError


@dataclass(frozen=True)
class Verdict:
    extracted: str | None  # the final answer (or program) taken from the response; None if none found
    correct: bool
    detail: str | None = None  # a short reason where it helps (e.g. "timeout"), else None


class Grader(Protocol):
    def grade(self, items: Sequence[tuple[str, Any]]) -> list[Verdict]:
        """Grade (response, problem) pairs; the result is in input order."""

    def close(self) -> None:
        """Stop any worker processes; called once the grader is no longer needed."""


_REGISTRY: dict[str, Callable[[], Grader]] = {}


def register(name: str) -> Callable[[Callable[[], Grader]], Callable[[], Grader]]:
    def wrap(factory: Callable[[], Grader]) -> Callable[[], Grader]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def get_grader(name: str) -> Grader:
    # Importing the modules registers their graders.
    from harness.grading import code as _code  # noqa: F401
    from harness.grading import integer as _integer  # noqa: F401
    from harness.grading import math as _math  # noqa: F401

    if name not in _REGISTRY:
        raise HarnessError(f"unknown grader '{name}' in the task file; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()
