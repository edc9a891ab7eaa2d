"""Progress display: rich bars for the CLI, a silent stand-in for tests and the trainer.

The k-turn loop only ever calls `progress.step(description, total)` and the returned `advance(n)`,
so it does not depend on rich.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

Advance = Callable[[float], None]


class Progress(Protocol):
    @contextmanager
    def step(self, description: str, total: float | None) -> Iterator[Advance]:
        """A long step with `total` units of work (None: unknown); yields a function to advance it."""


class SilentProgress:
    @contextmanager
    def step(self, description: str, total: float | None) -> Iterator[Advance]:
        yield lambda n=1: None


class RichProgress:
    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as _Progress,
        )

        self.console = console or Console(stderr=True)
        self._progress = _Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            # A failed run ends with one error line, not with half-finished bars above it.
            for task in self._progress.tasks:
                self._progress.update(task.id, visible=False)
        self._progress.stop()

    @contextmanager
    def step(self, description: str, total: float | None) -> Iterator[Advance]:
        task_id = self._progress.add_task(description, total=total)
        try:
            yield lambda n=1: self._progress.advance(task_id, n)
        finally:
            if total is not None:
                self._progress.update(task_id, completed=total)
            else:
                self._progress.update(task_id, total=1, completed=1)
