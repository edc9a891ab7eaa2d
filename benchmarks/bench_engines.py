"""Generation speed on MATH prompts: the hf engine beside its own ceiling and its alternatives, and each
backend's harness overhead, all measured in one run.

The workload: N MATH-500 problems, `--turns` turns, greedy, M new tokens. It runs through the harness's
k-turn loop (conversations, journal, grading in the background) on each backend; the time inside the
engine's `chat` calls is measured in the same run, so the harness's overhead is
    overhead = wall time of the whole loop / time inside the engine - 1.
hf and llamacpp take follow-ups, so the loop hands them the whole run in one call and each episode's
next turn joins the queue as soon as its previous turn is back; with `--turns` 2 or more the loop
also runs once more driving the engine one call per turn (the turn barrier, as before), as the
baseline of that. Then, for hf, the very conversations the harness sent are generated again:
  - no drafts: the same loop once more with the engine decoding one token a row at each step (no
    draft tokens, engines/drafts.py), with a check that it gives the same completions;
  - unpacked weights: the same engine with its Linear layers through F.linear (MKL) instead of
    oneDNN with weights packed once (engines/packed_linear.py);
  - all rows busy: the same engine with no stop tokens, so every row generates all M tokens; the
    engine's ceiling on this machine. busy ratio = harness useful tokens/s / this figure.
  - decode at full rows (derived, not run): the no-drafts run with its decode steps' time replaced by
    what its decode work (one row-step per useful token but each completion's first, which comes from
    its prefill) costs at the all-rows-busy run's time per row-step; its prefill and the rest as
    measured. The ceiling of scheduling alone: what is left between it and all rows busy is prefill,
    which the busy run spreads over M tokens a row and the harness over each completion's own.
  - static batches: the previous engine's algorithm (longest prompts first, `model.generate` on static
    batches of the same size, each row kept until its batch's longest ends), as the baseline.
  - transformers' own continuous batching, `model.generate_batch`, on the same prompts.
With `--engines llamacpp` (llama-cpp-python installed), the llamacpp engine runs the same loop with
`--parallel` slots on the embedded model (its float32 copy, see llamacpp.float32_copy), and its calls
are generated again:
  - prompts whole: the same loop once more with every prompt computed whole, where slots keep the
    prompt tokens a prompt shares with the one before (llamacpp.MIN_PIECE);
  - all rows busy: no stop tokens, every slot generates all M tokens (its ceiling).
  - the llamacpp engine with one slot, and on the embedded Q4_1 file itself (the previous default).
  - llama.cpp one stream: llama-cpp-python's own `Llama.create_chat_completion` on the engine's
    file, one conversation after another (the baseline).
"Useful" tokens are those kept in completions (up to and including the stop token). For `openai` the
script also replays the same requests with a bare `openai` client (the same concurrency, no harness).

    nice python benchmarks/bench_engines.py --data ../shared/data/math/math500.jsonl \
        [--problems 48] [--max-new-tokens 128] [--turns 1] [--engines hf,llamacpp] [--parallel 16] \
        [--base-url http://127.0.0.1:8080/v1]

Without --base-url the server is not measured. Start one with scripts/llama_server.sh. The load
average is printed beside the figures: on a shared machine, compare the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.data import load_problems
from harness.engines.base import FollowUpEngine, SamplingSettings
from harness.engines.llamacpp import available_cores
from harness.episodes import conversation, run_episodes
from harness.grading import get_grader
from harness.models import embedded_gguf
from harness.store import Journal
from harness.tasks import load_task


class TimedEngine:
    """Wraps an engine, adds up the seconds spent inside its `chat` calls and keeps each call's conversations."""

    def __init__(self, engine):
        self.engine, self.seconds, self.calls = engine, 0.0, []
        self.name, self.model_name = engine.name, engine.model_name

    def chat(self, conversations, settings, *args, **kwargs):
        self.calls.append((list(conversations), settings))
        return self._timed(self.engine.chat, conversations, settings, *args, **kwargs)

    def _timed(self, call, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def describe(self):
        return self.engine.describe()


class TimedFollowUpEngine(TimedEngine):
    """The same for an engine that takes follow-ups (the harness hands it the whole run in one
    call); a call's conversations include the follow-ups it was given."""

    def chat_with_follow_ups(self, conversations, settings, on_done, seeds):
        generated = list(conversations)
        self.calls.append((generated, settings))

        def done(index, completions):
            follow_up = on_done(index, completions)
            if follow_up is not None:
                generated.append(follow_up[0])
            return follow_up

        return self._timed(self.engine.chat_with_follow_ups, conversations, settings, done, seeds)


def measure(engine, task, problems, settings, turns: int, by_turn: bool = False) -> dict:
    """The harness's k-turn loop on `engine`; `by_turn`: one `chat` call per turn, as an engine
    that takes no follow-ups is driven (the turn barrier), where it would take them."""
    timed = TimedEngine(engine) if by_turn or not isinstance(engine, FollowUpEngine) else TimedFollowUpEngine(engine)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        episodes = run_episodes(
            task,
            problems,
            timed,
            get_grader(task.grader),
            turns=turns,
            samples=1,
            settings=settings,
            journal=Journal(Path(tmp) / "journal.jsonl"),
        )
        wall = time.perf_counter() - start
    tokens = sum(t.completion_tokens for e in episodes for t in e.turns)
    return {"episodes": episodes, "wall": wall, "engine": timed.seconds, "tokens": tokens, "calls": timed.calls}


def timed_tokens(generate, calls) -> tuple[float, int]:
    """Seconds and tokens of `generate(conversations, settings) -> tokens` over the harness's calls."""
    seconds = tokens = 0
    for conversations, settings in calls:
        start = time.perf_counter()
        tokens += generate(conversations, settings)
        seconds += time.perf_counter() - start
    return seconds, tokens


class ForwardClock:
    """Seconds in the slot decoder's forwards, prefills apart from decode steps (the forwards given
    `keep`: each row's last token, and its draft if any), and the decode steps' count, rows and
    tokens fed. Timed on the host: exact on CPU, where a forward returns when its work is done."""

    def __init__(self):
        self.prefill = self.decode = 0.0
        self.steps = self.rows = self.fed = 0

    @classmethod
    @contextlib.contextmanager
    def around(cls) -> Iterator[ForwardClock]:
        from harness.engines import slots

        clock, original = cls(), slots.SlotDecoder._forward

        def timed(decoder, ids, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(decoder, ids, *args, **kwargs)
            finally:
                if kwargs.get("keep") is None:
                    clock.prefill += time.perf_counter() - start
                else:
                    clock.decode += time.perf_counter() - start
                    clock.steps, clock.rows = clock.steps + 1, clock.rows + ids.shape[0]
                    clock.fed += ids.numel()

        slots.SlotDecoder._forward = timed
        try:
            yield clock
        finally:
            slots.SlotDecoder._forward = original

    def summary(self, seconds: float) -> str:
        rows = self.rows / max(1, self.steps)
        drafts = f", {self.fed / max(1, self.rows):.2f} tokens fed a row" if self.fed > self.rows else ""
        return (
            f"prefill {self.prefill:.1f} s, {self.steps} decode steps {self.decode:.1f} s "
            f"({rows:.1f} rows a step{drafts}), rest {seconds - self.prefill - self.decode:.1f} s"
        )


def decode_at_full_rows(harness: dict, clock: ForwardClock, busy: ForwardClock) -> float:
    """The harness run's seconds with its decode steps at the busy run's time per row-step (see the
    module docstring)."""
    completions = sum(len(e.turns) for e in harness["episodes"])
    row_steps = harness["tokens"] - completions
    return harness["wall"] - clock.decode + row_steps * busy.decode / busy.rows


def all_rows_busy(engine, conversations, settings) -> int:
    saved, engine.stop_ids = engine.stop_ids, set()
    try:
        return generated(engine, conversations, settings)
    finally:
        engine.stop_ids = saved


def unpacked(engine, conversations, settings) -> int:
    """The harness with its Linear layers computed by F.linear (see engines/packed_linear.py)."""
    engine.packed_linears.enabled = False
    try:
        return generated(engine, conversations, settings)
    finally:
        engine.packed_linears.enabled = True


def prompt_ids(engine, conversations) -> list[list[int]]:
    return [engine.encode(c) for c in conversations]


def useful(rows, stop_ids) -> int:
    """Tokens up to and including each row's first stop token (all of them where it never stopped)."""
    return sum(next((j + 1 for j, t in enumerate(row) if t in stop_ids), len(row)) for row in rows)


def static_batches(engine, conversations, settings) -> int:
    import torch

    prompts = sorted(prompt_ids(engine, conversations), key=len, reverse=True)
    tokens = 0
    for start in range(0, len(prompts), engine.batch_size):
        padded = engine.tokenizer.pad({"input_ids": prompts[start : start + engine.batch_size]}, return_tensors="pt")
        with torch.inference_mode():
            out = engine.model.generate(
                **padded.to(engine.model.device),
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(engine.stop_ids),
                pad_token_id=engine.tokenizer.pad_token_id,
            )
        tokens += useful(out[:, padded["input_ids"].shape[1] :].tolist(), engine.stop_ids)
    return tokens


def transformers_generate_batch(engine, conversations, settings) -> int:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(engine.stop_ids),
        pad_token_id=engine.tokenizer.pad_token_id,
    )
    results = engine.model.generate_batch(prompt_ids(engine, conversations), generation_config=config)
    return useful([r.generated_tokens for r in results.values()], engine.stop_ids)


def llama_one_stream(reference, conversations, settings) -> int:
    """Useful tokens of llama-cpp-python's own chat completion, one conversation at a time; its count
    leaves out the end-of-generation token, which the engines count."""
    tokens = 0
    for conv in conversations:
        out = reference.create_chat_completion(conv, temperature=0.0, max_tokens=settings.max_new_tokens)
        tokens += out["usage"]["completion_tokens"] + (out["choices"][0]["finish_reason"] == "stop")
    return tokens


def llamacpp_rows(task, problems, settings, turns: int, parallel: int) -> tuple[list, dict]:
    """The llamacpp engine through the harness, then its ceiling and its baselines on the same calls."""
    import llama_cpp

    from harness.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine.from_model(None, parallel=parallel)
    engine.chat([conversation(task, problems[0], [])], SamplingSettings(max_new_tokens=2))
    lc = measure(engine, task, problems, settings, turns)
    rows = [(f"llamacpp harness (parallel {parallel})", lc["wall"], lc["tokens"])]
    show(rows[-1])
    keeps, engine._reuses_prompts = engine.reuses_prompts(), False  # every prompt computed whole
    whole = measure(engine, task, problems, settings, turns)
    engine._reuses_prompts = keeps
    rows.append(("llamacpp harness, prompts whole", whole["wall"], whole["tokens"]))
    show(rows[-1])
    if turns > 1:
        by_turn = measure(engine, task, problems, settings, turns, by_turn=True)
        rows.append(("llamacpp, one call per turn", by_turn["wall"], by_turn["tokens"]))
        show(rows[-1])
    rows.append(("llamacpp, all rows busy", *timed_tokens(lambda c, s: all_rows_busy(engine, c, s), lc["calls"])))
    show(rows[-1])
    one = LlamaCppEngine.from_model(None, parallel=1)
    rows.append(("llamacpp engine, parallel 1", *timed_tokens(lambda c, s: generated(one, c, s), lc["calls"])))
    show(rows[-1])
    # The embedded file itself (4-bit weights), where the engine runs its float32 copy.
    q4 = LlamaCppEngine.from_model(str(embedded_gguf()), parallel=parallel)
    rows.append(("llamacpp on the Q4_1 file", *timed_tokens(lambda c, s: generated(q4, c, s), lc["calls"])))
    show(rows[-1])
    # The engine's file, attention kernel and thread count.
    reference = llama_cpp.Llama(
        model_path=str(engine.model_path), n_ctx=4096, n_threads=available_cores(), flash_attn=True, verbose=False
    )
    rows.append(("llama.cpp one stream", *timed_tokens(lambda c, s: llama_one_stream(reference, c, s), lc["calls"])))
    show(rows[-1])
    return rows, lc


def generated(engine, conversations, settings) -> int:
    return sum(c[0].completion_tokens for c in engine.chat(conversations, settings))


def hf_engine_rows(task, problems, settings, args) -> tuple[list, dict]:
    """The hf engine through the harness, then its ceiling and its alternatives on the same calls."""
    from harness.engines.hf import HFEngine

    engine = HFEngine.from_model(None, batch_size=args.batch_size)
    # One short call first: the first forward pays one-time setup that no figure below should carry.
    engine.chat([conversation(task, problems[0], [])], SamplingSettings(max_new_tokens=2))
    with ForwardClock.around() as clock:
        hf = measure(engine, task, problems, settings, args.turns)
    rows = [("hf harness (slot refill)", hf["wall"], hf["tokens"])]
    show(rows[-1])
    print(f"  {clock.summary(hf['wall'])}")
    drafts, engine.draft_tokens = engine.draft_tokens, 0
    with ForwardClock.around() as plain_clock:
        plain = measure(engine, task, problems, settings, args.turns)
    engine.draft_tokens = drafts
    rows.append(("hf harness, no drafts", plain["wall"], plain["tokens"]))
    show(rows[-1])
    print(f"  {plain_clock.summary(plain['wall'])}")
    same = [[t.response for t in e.turns] for e in plain["episodes"]] == [
        [t.response for t in e.turns] for e in hf["episodes"]
    ]
    print(f"  the same completions with and without drafts: {same}")
    if args.turns > 1:
        by_turn = measure(engine, task, problems, settings, args.turns, by_turn=True)
        rows.append(("hf, one call per turn", by_turn["wall"], by_turn["tokens"]))
        show(rows[-1])
    for label, generate in (
        ("hf harness, unpacked weights", lambda c, s: unpacked(engine, c, s)),
        ("hf, all rows busy", lambda c, s: all_rows_busy(engine, c, s)),
        ("static batches (previous hf)", lambda c, s: static_batches(engine, c, s)),
        ("transformers generate_batch", lambda c, s: transformers_generate_batch(engine, c, s)),
    ):
        if label.startswith("transformers") and args.skip_generate_batch:
            continue
        with ForwardClock.around() as busy:
            rows.append((label, *timed_tokens(generate, hf["calls"])))
        show(rows[-1])
        if label == "hf, all rows busy":
            print(f"  {busy.summary(rows[-1][1])}")
            derived = decode_at_full_rows(plain, plain_clock, busy)
            rows.insert(2, ("no drafts, decode at full rows", derived, plain["tokens"]))
    return rows, hf


def bare_client_seconds(base_url: str, model: str, task, episodes, settings, concurrency: int, turns: int) -> float:
    """The same requests (every turn), sent with the plain openai client: the server's own time."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="EMPTY")
    total = 0.0
    for turn in range(turns):
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


def table(title: str, rows, busy, base=None) -> None:
    """Each row's useful tokens/s, as a share of the all-rows-busy figure and a multiple of `base`."""
    busy_rate = busy[2] / busy[1]
    print(
        f"{title:30} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'vs busy':>8}"
        + (f" {'vs one stream':>14}" if base else "")
    )
    for label, seconds, tokens in rows:
        line = f"{label:30} {seconds:8.1f} {tokens:7d} {tokens / seconds:7.1f} {tokens / seconds / busy_rate:8.2f}"
        if base:
            line += f" {tokens / seconds / (base[2] / base[1]):14.2f}"
        print(line)


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def show(row) -> None:
    """Each figure as soon as it is measured, with the load average at that moment."""
    label, seconds, tokens = row
    print(f"{label}: {tokens} tokens in {seconds:.1f} s; load average {load_average()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--skip-generate-batch", action="store_true", help="leave out transformers' generate_batch")
    parser.add_argument("--engines", default="hf", help="comma-separated: hf, llamacpp")
    parser.add_argument("--parallel", type=int, default=16, help="llamacpp slots")
    args = parser.parse_args()
    engines = set(args.engines.split(","))

    task = load_task("math")
    problems, _ = load_problems(task, args.data, args.problems)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    print(f"load average (1/5/15 min) at start: {load_average()}", flush=True)

    hf_rows, lc_rows, overheads = [], [], []
    if "hf" in engines:
        hf_rows, hf = hf_engine_rows(task, problems, settings, args)
        overheads.append(("hf", hf, None))
    if "llamacpp" in engines:
        lc_rows, lc = llamacpp_rows(task, problems, settings, args.turns, args.parallel)
        overheads.append(("llamacpp", lc, None))
    if args.base_url:
        from harness.engines.openai import OpenAIEngine

        server = OpenAIEngine.from_server(args.base_url, concurrency=args.concurrency)
        oa = measure(server, task, problems, settings, args.turns)
        bare = bare_client_seconds(
            args.base_url, server.model_name, task, oa["episodes"], settings, args.concurrency, args.turns
        )
        overheads.append(("openai", oa, bare))

    print(
        f"\nworkload: {len(problems)} MATH-500 problems x {args.turns} turn(s), greedy, max {args.max_new_tokens} "
        f"new tokens, hf batch size {args.batch_size}, llamacpp parallel {args.parallel}, {os.cpu_count()} CPUs; "
        f"load average now {load_average()}"
    )
    if hf_rows:
        table("hf engine", hf_rows, busy=next(r for r in hf_rows if r[0] == "hf, all rows busy"))
    if lc_rows:
        table("llamacpp engine", lc_rows, busy=next(r for r in lc_rows if "all rows busy" in r[0]), base=lc_rows[-1])
    header = f"{'backend':8} {'wall s':>8} {'engine s':>9} {'overhead':>9} {'tokens':>7} {'tok/s':>7}"
    print(f"\n{header} {'bare client s':>14}")
    for name, r, bare in overheads:
        overhead = r["wall"] / r["engine"] - 1
        bare_text = f"{bare:14.1f}" if bare is not None else f"{'-':>14}"
        print(
            f"{name:8} {r['wall']:8.1f} {r['engine']:9.1f} {overhead:9.2%} {r['tokens']:7d} "
            f"{r['tokens'] / r['wall']:7.1f} {bare_text}"
        )


if __name__ == "__main__":
    main()
