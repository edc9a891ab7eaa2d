"""What the turn barrier costs: the same episodes through the openai backend, once turn by turn (one
`chat` call per turn, as for an engine without `submit`) and once pipelined (each episode's next turn
sent as soon as its own previous turn is back), measured in one run against the same server.

Without --base-url the server is tests/fake_openai_server.py on 127.0.0.1 with answer times drawn per
(problem, turn) from a seeded log-normal distribution (median --median-s, spread --sigma), as answer
lengths vary: it measures the scheduling alone, not a model. With --base-url (e.g. after
`bash scripts/llama_server.sh 8080`) it measures a real server on --data.

    nice python benchmarks/bench_turn_barrier.py [--episodes 48] [--turns 2] [--concurrency 8]
    nice python benchmarks/bench_turn_barrier.py --base-url http://127.0.0.1:8080/v1 \\
        --data ../shared/data/math/math500.jsonl --episodes 16 --max-new-tokens 64

Each is run --repeat times, alternating which goes first, and the medians are compared. The load
average is printed beside every figure; compare the ratio, not the absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import statistics
import time

from harness.data import Problem, load_problems
from harness.engines.base import SamplingSettings
from harness.engines.openai import OpenAIEngine
from harness.episodes import run_episodes
from harness.grading import get_grader
from harness.tasks import load_task


class TurnByTurn:
    """The engine without `submit`: run_episodes drives it one batched call per turn."""

    def __init__(self, engine: OpenAIEngine):
        self.name, self.model_name = engine.name, engine.model_name
        self.chat, self.describe = engine.chat, engine.describe


def scripted_server(median_s: float, sigma: float, seed: int):
    """The tests' fake server, answering each (problem, turn) after its own log-normal delay."""
    from tests.fake_openai_server import FakeOpenAIServer

    class Delayed(FakeOpenAIServer):
        def answer(self, body: dict) -> dict:
            problem = re.search(r"Problem number (\d+)", body["messages"][0]["content"]).group(1)
            turn = sum(m["role"] == "assistant" for m in body["messages"])
            time.sleep(random.Random(f"{seed}:{problem}:{turn}").lognormvariate(0.0, sigma) * median_s)
            return super().answer(body)

    return Delayed()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url")
    parser.add_argument("--data", help="problems for a real server (--base-url)")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--median-s", type=float, default=0.1, help="scripted server: median answer time")
    parser.add_argument("--sigma", type=float, default=1.0, help="scripted server: log-normal spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating which goes first")
    args = parser.parse_args()

    task = load_task("math")
    if args.base_url:
        problems, _ = load_problems(task, args.data, args.episodes, None)
        server = contextlib.nullcontext()
    else:
        problems = [
            Problem(f"p{i}", str(i), {"problem": f"Problem number {i}.", "answer": str(i)})
            for i in range(args.episodes)
        ]
        server = scripted_server(args.median_s, args.sigma, args.seed)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    grader = get_grader("math")
    with server as scripted:
        base_url = args.base_url or scripted.base_url
        engine = OpenAIEngine.from_server(base_url, concurrency=args.concurrency)
        print(f"{len(problems)} episodes x {args.turns} turns, concurrency {args.concurrency}, server {base_url}")
        figures: dict[str, list[float]] = {"turn by turn": [], "pipelined": []}
        order = [("turn by turn", TurnByTurn(engine)), ("pipelined", engine)]
        for repeat in range(args.repeat):
            # Alternate which goes first, so neither always meets a cold connection pool.
            for label, driven in order if repeat % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                episodes = run_episodes(task, problems, driven, grader, turns=args.turns, samples=1, settings=settings)
                figures[label].append(time.perf_counter() - start)
                tokens = sum(t.completion_tokens for e in episodes for t in e.turns)
                print(f"{label:13} {figures[label][-1]:7.2f} s  {tokens} tokens  load average {load_average()}")
    grader.close()
    by_turn, pipelined = (statistics.median(figures[k]) for k in ("turn by turn", "pipelined"))
    print(f"medians: turn by turn {by_turn:.2f} s, pipelined {pipelined:.2f} s, ratio {by_turn / pipelined:.2f}x")


if __name__ == "__main__":
    main()
