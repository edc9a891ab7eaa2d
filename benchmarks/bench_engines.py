"""Throughput of the 2-turn MATH workload through the harness, per backend, beside the engine's own time.

For each backend the same workload (N MATH-500 problems, 2 turns, greedy, M new tokens) runs through
the harness's k-turn loop (conversations, journal, grading in the background). The time spent inside
the engine's `chat` calls is measured in the same run, so the harness's overhead is
    overhead = wall time of the whole loop / time inside the engine - 1.
For `openai` the script also replays the same requests with a bare `openai` client (the same
concurrency, no harness), as the server's own time for the same requests.

    python benchmarks/bench_engines.py --data ../shared/data/math/math500.jsonl \
        [--problems 32] [--max-new-tokens 256] [--base-url http://127.0.0.1:8080/v1]

Without --base-url only `hf` is measured. Start a server with scripts/llama_server.sh.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.data import load_problems
from harness.engines.base import SamplingSettings
from harness.episodes import conversation, run_episodes
from harness.grading import get_grader
from harness.store import Journal
from harness.tasks import load_task


class TimedEngine:
    """Wraps an engine and adds up the seconds spent inside its `chat` calls."""

    def __init__(self, engine):
        self.engine, self.seconds = engine, 0.0
        self.name, self.model_name = engine.name, engine.model_name

    def chat(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.engine.chat(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def describe(self):
        return self.engine.describe()


def measure(engine, task, problems, settings) -> dict:
    timed = TimedEngine(engine)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        episodes = run_episodes(
            task,
            problems,
            timed,
            get_grader(task.grader),
            turns=2,
            samples=1,
            settings=settings,
            journal=Journal(Path(tmp) / "journal.jsonl"),
        )
        wall = time.perf_counter() - start
    tokens = sum(t.completion_tokens for e in episodes for t in e.turns)
    return {"episodes": episodes, "wall": wall, "engine": timed.seconds, "tokens": tokens}


def bare_client_seconds(base_url: str, model: str, task, episodes, settings, concurrency: int) -> float:
    """The same requests (both turns), sent with the plain openai client: the server's own time."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="EMPTY")
    total = 0.0
    for turn in (0, 1):
        convs = [conversation(task, e.problem, [t.response for t in e.turns[:turn]]) for e in episodes]

        def send(conv):
            return client.chat.completions.create(
                model=model, messages=conv, max_tokens=settings.max_new_tokens, temperature=0.0
            )

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, convs))
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    task = load_task("math")
    problems, _ = load_problems(task, args.data, args.problems)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    rows = []

    from harness.engines.hf import HFEngine

    hf = measure(HFEngine.from_model(None, batch_size=args.batch_size), task, problems, settings)
    rows.append(("hf", hf, None))
    if args.base_url:
        from harness.engines.openai import OpenAIEngine

        engine = OpenAIEngine.from_server(args.base_url, concurrency=args.concurrency)
        oa = measure(engine, task, problems, settings)
        bare = bare_client_seconds(args.base_url, engine.model_name, task, oa["episodes"], settings, args.concurrency)
        rows.append(("openai", oa, bare))

    print(f"workload: {len(problems)} MATH-500 problems x 2 turns, greedy, max {args.max_new_tokens} new tokens")
    print(
        f"{'backend':8} {'wall s':>8} {'engine s':>9} {'overhead':>9} {'tokens':>7} {'tok/s':>7} {'bare client s':>14}"
    )
    for name, r, bare in rows:
        overhead = r["wall"] / r["engine"] - 1
        bare_text = f"{bare:14.1f}" if bare is not None else f"{'-':>14}"
        print(
            f"{name:8} {r['wall']:8.1f} {r['engine']:9.1f} {overhead:9.2%} {r['tokens']:7d} "
            f"{r['tokens'] / r['wall']:7.1f} {bare_text}"
        )


if __name__ == "__main__":
    main()
