"""Progress for logs: a plain line every few seconds, with conversations, tokens, tokens/s and an ETA."""

import io
import threading

from harness.progress import LineProgress, status_line


def test_status_line_shows_units_tokens_rate_elapsed_and_eta():
    # 12 of 48 done in 60 s with 1,536 tokens: 25.6 tok/s; 36 left at 5 s each is 180 s.
    line = status_line("turn 1/2: generating", 12, 48, 1536, 60.0)
    assert line == "turn 1/2: generating | 12/48 | 1,536 tokens, 25.6 tok/s | elapsed 0:01:00 | ETA 0:03:00"


def test_status_line_leaves_out_what_it_cannot_know():
    assert status_line("grading", 0, 10, 0, 3.0) == "grading | 0/10 | elapsed 0:00:03"  # no rate yet: no ETA
    assert status_line("loading model", 0, None, 0, 3725.0) == "loading model | 0 | elapsed 1:02:05"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_lines_come_every_few_seconds_while_a_step_runs_and_once_at_its_end():
    stream, clock = io.StringIO(), Clock()
    progress = LineProgress(stream, every=0.05, clock=clock)
    with progress.step("turn 1/1: generating", 4) as advance:
        advance(1, tokens=100)
        clock.now += 10.0
        written = stream.getvalue().count("\n")
        while stream.getvalue().count("\n") == written:  # wait for the next periodic line
            threading.Event().wait(0.01)
        advance(2, tokens=300)
        clock.now += 10.0
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert "turn 1/1: generating | 1/4 | 100 tokens, 10.0 tok/s | elapsed 0:00:10 | ETA 0:00:30" in lines
    assert lines[-1] == "turn 1/1: generating | 4/4 | 400 tokens, 20.0 tok/s | elapsed 0:00:20"


def test_a_step_that_fails_writes_no_closing_line():
    stream = io.StringIO()
    try:
        with LineProgress(stream, every=60).step("loading model", None):
            raise ValueError("no such model")
    except ValueError:
        pass
    assert stream.getvalue() == ""
