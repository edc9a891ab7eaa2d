"""Progress display: rich bars on a terminal, a plain line every few seconds elsewhere (a log file, CI,
a cluster job), a silent stand-in for tests and the trainer.

The k-turn loop only ever calls `progress.step(description, total)` and the returned
`advance(n, tokens=k)` (n units done, k tokens generated with them), so it does not depend on rich.
Steps that generate show tokens, tokens/s and an ETA beside the units done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Protocol

Advance = Callable[..., None]  # advance(n: float = 1, tokens: int = 0)


class Progress(Protocol):
    @contextmanager
    def step(self, description: str, total: float | None) -> Iterator[Advance]:
        """A long step with `total` units of work (None: unknown); yields a function to advance it."""


class SilentProgress:
    @contextmanager
    def step(self, description: str, total: float | None) -> Iterator[Advance]:
        yield lambda n=1, tokens=0: None


def progress_for(console, every: float):
    """Bars where stderr is a terminal; otherwise a plain line every `every` seconds."""
    return RichProgress(console) if console.is_terminal else LineProgress(console.file, every)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def status_line(description: str, done: float, total: float | None, tokens: int, elapsed: float) -> str:
    """One line of a step's state: units done, tokens and tokens/s where any, elapsed time, and an
    ETA at the rate so far (elapsed / done x what is left)."""
    parts = [description, f"{done:g}/{total:g}" if total is not None else f"{done:g}"]
    if tokens:
        parts.append(f"{tokens:,} tokens, {tokens / elapsed if elapsed > 0 else 0.0:.1f} tok/s")
    parts.append(f"elapsed {_clock(elapsed)}")
    if total is not None and 0 < done < total:
        parts.append(f"ETA {_clock(elapsed / done * (total - done))}")
    return " | ".join(parts)


class LineProgress:
    """Progress as plain lines: one every `every` seconds while a step runs and one when it ends, so
    a log shows how fast a long run goes and when it will end."""

    def __init__(self, stream: IO[str], every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.stream, self.every, self.clock = stream, every, clock

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass

    @contextmanager
    def step(self, description: str, total: float | None) -> Iterator[Advance]:
        state = {"done": 0.0, "tokens": 0}
        start, lock, stop = self.clock(), threading.Lock(), threading.Event()

        def advance(n: float = 1, tokens: int = 0) -> None:
            with lock:
                state["done"] += n
                state["tokens"] += tokens

        def write() -> None:
            with lock:
                line = status_line(description, state["done"], total, state["tokens"], self.clock() - start)
            print(line, file=self.stream, flush=True)

        def every_few_seconds() -> None:
            while not stop.wait(self.every):
                write()

        ticker = threading.Thread(target=every_few_seconds, daemon=True, name="progress")
        ticker.start()
        try:
            yield advance
        finally:
            stop.set()
            ticker.join()
        # Only a step that succeeded gets its closing line: a failed run ends with its error line.
        if total is not None:
            state["done"] = max(state["done"], total)
        write()


class RichProgress:
    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as _Progress,
        )
        from rich.text import Text

        class TokensColumn(ProgressColumn):
            """Tokens generated and tokens/s, on steps that generate."""

            def render(self, task) -> Text:
                tokens = task.fields.get("tokens", 0)
                if not tokens:
                    return Text("")
                rate = tokens / task.elapsed if task.elapsed else 0.0
                return Text(f"{tokens:,} tok {rate:.1f} tok/s")

        self.console = console or Console(stderr=True)
        self._progress = _Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TokensColumn(),
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
        task_id = self._progress.add_task(description, total=total, tokens=0)
        counted = {"tokens": 0}

        def advance(n: float = 1, tokens: int = 0) -> None:
            counted["tokens"] += tokens
            self._progress.update(task_id, advance=n, tokens=counted["tokens"])

        try:
            yield advance
        finally:
            if total is not None:
                self._progress.update(task_id, completed=total)
            else:
                self._progress.update(task_id, total=1, completed=1)
