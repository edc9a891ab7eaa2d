"""One engine interface, three backends: the same conformance checks for hf (tiny model), vllm
(through tests/stand_ins/vllm, a stand-in of vLLM's API) and openai (a fake server on 127.0.0.1);
then what is particular to each adapter."""

import json
import sys

import pytest

from harness.engines.base import PROMPT_TOO_LONG, SamplingSettings
from harness.errors import HarnessError
from tests.fake_openai_server import FakeOpenAIServer

CONVS = [
    [{"role": "user", "content": "What is 1+1?"}],
    [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "There might be an error. Try again."},
    ],
    [{"role": "user", "content": "What is 1+1?"}],
]


@pytest.fixture(params=["hf", "vllm", "openai"])
def engine(request, tiny_model_dir):
    if request.param == "hf":
        from harness.engines.hf import HFEngine

        yield HFEngine.from_model(str(tiny_model_dir), batch_size=2)
    elif request.param == "vllm":
        request.getfixturevalue("stand_in_vllm")
        from harness.engines.vllm import VLLMEngine

        yield VLLMEngine.from_model(str(tiny_model_dir))
    else:
        from harness.engines.openai import OpenAIEngine

        with FakeOpenAIServer() as server:
            yield OpenAIEngine.from_server(server.base_url, concurrency=3)


def test_conformance_n_completions_per_conversation_in_order(engine):
    out = engine.chat(CONVS, SamplingSettings(max_new_tokens=6, n=2, temperature=1.0, seed=1))
    assert [len(c) for c in out] == [2, 2, 2]
    for completions in out:
        for c in completions:
            assert isinstance(c.text, str) and c.finish_reason in ("stop", "length")
            assert c.prompt_tokens > 0 and 0 <= c.completion_tokens <= 6


def test_conformance_token_ids_are_the_sampled_ones_where_the_engine_has_them(engine):
    """hf and vllm return the prompt and sampled ids (the trainer scores exactly these); a server returns text."""
    out = engine.chat(CONVS, SamplingSettings(max_new_tokens=6, temperature=1.0, seed=2))
    for conv, c in ((conv, c) for conv, completions in zip(CONVS, out) for c in completions):
        if engine.name == "openai":
            assert c.token_ids is None and c.prompt_token_ids is None
            continue
        rendered = engine.tokenizer(engine.render(conv), add_special_tokens=False)["input_ids"]
        assert list(c.prompt_token_ids) == rendered and len(rendered) == c.prompt_tokens
        assert len(c.token_ids) == c.completion_tokens
        stopped = c.finish_reason == "stop"
        text_ids = c.token_ids[:-1] if stopped else c.token_ids
        assert engine.tokenizer.decode(list(text_ids), skip_special_tokens=True) == c.text
        if stopped:
            assert c.token_ids[-1] == engine.tokenizer.eos_token_id


def test_conformance_each_conversation_reported_done_once(engine):
    seen = []
    out = engine.chat(CONVS, SamplingSettings(max_new_tokens=4), on_done=lambda i, cs: seen.append((i, cs)))
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert all(out[i] == cs for i, cs in seen)


def test_conformance_greedy_repeats_and_identical_conversations_agree(engine):
    settings = SamplingSettings(max_new_tokens=8)
    first = [c[0].text for c in engine.chat(CONVS, settings)]
    assert first == [c[0].text for c in engine.chat(CONVS, settings)]
    if engine.name != "openai":  # the fake server echoes the seed, which differs per position
        assert first[0] == first[2]


def test_conformance_describe_names_backend_and_model(engine):
    facts = engine.describe()
    assert facts["backend"] == engine.name and facts["model"] == engine.model_name
    json.dumps(facts)


def test_hf_and_vllm_see_the_same_prompt_text_and_agree_greedily(tiny_model_dir, stand_in_vllm):
    from harness.engines.hf import HFEngine
    from harness.engines.vllm import VLLMEngine

    hf, vl = HFEngine.from_model(str(tiny_model_dir)), VLLMEngine.from_model(str(tiny_model_dir))
    settings = SamplingSettings(max_new_tokens=8)
    hf_texts = [c[0].text for c in hf.chat(CONVS, settings)]
    vl_texts = [c[0].text for c in vl.chat(CONVS, settings)]
    sent = stand_in_vllm.CALLS[-1]["chat"]
    assert sent == [hf.render(c) for c in CONVS]  # byte for byte, rendered by vLLM's own path
    assert hf_texts == vl_texts


def test_vllm_gets_options_and_per_conversation_seeds(tiny_model_dir, stand_in_vllm):
    from harness.engines.vllm import VLLMEngine

    engine = VLLMEngine.from_model(
        str(tiny_model_dir), tensor_parallel_size=1, gpu_memory_utilization=0.5, max_model_len=512, seed=3
    )
    init = stand_in_vllm.CALLS[0]["init"]
    assert (init["gpu_memory_utilization"], init["max_model_len"], init["seed"]) == (0.5, 512, 3)
    engine.chat(CONVS, SamplingSettings(max_new_tokens=4, temperature=0.8, top_p=0.9, n=2), seeds=[7, 8, 9])
    call = stand_in_vllm.CALLS[-1]
    assert [p.seed for p in call["params"]] == [7, 8, 9]
    assert {(p.n, p.temperature, p.top_p, p.max_tokens) for p in call["params"]} == {(2, 0.8, 0.9, 4)}
    assert call["use_tqdm"] is False


def test_vllm_prompt_over_max_model_len_is_skipped_not_fatal(tiny_model_dir, stand_in_vllm):
    from harness.engines.vllm import VLLMEngine

    engine = VLLMEngine.from_model(str(tiny_model_dir), max_model_len=40)
    long = [{"role": "user", "content": "word " * 100}]
    out = engine.chat([CONVS[0], long], SamplingSettings(max_new_tokens=4))
    assert out[0][0].finish_reason != PROMPT_TOO_LONG and out[1][0].finish_reason == PROMPT_TOO_LONG


def test_vllm_missing_is_one_clear_error(monkeypatch):
    from harness.engines.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(HarnessError, match=r"pip install 'score-eval\[vllm\]'"):
        VLLMEngine.from_model(None)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_vllm_takes_each_next_turn_as_its_turn_finishes_and_gives_the_turn_by_turn_records(
    tiny_model_dir, stand_in_vllm, temperature
):
    """The k-turn loop hands vLLM the whole run: every episode's first turn is one request to its
    engine, and a next turn is added as soon as its turn is back, while other first turns still
    wait (the stand-in answers the last request first). The records equal those of one LLM.chat
    call per turn, with the prompt ids LLM.chat sends."""
    from harness.data import Problem
    from harness.engines.vllm import VLLMEngine
    from harness.episodes import run_episodes
    from harness.grading import get_grader
    from harness.tasks import load_task
    from tests.test_episodes_follow_ups import ByTurn

    engine = VLLMEngine.from_model(str(tiny_model_dir))
    problems = [Problem(f"p{i}", str(i), {"problem": f"What is {i} + 0?", "answer": str(i)}) for i in range(3)]
    settings = SamplingSettings(max_new_tokens=6, temperature=temperature, seed=5)

    def records(engine):
        episodes = run_episodes(
            load_task("math"), problems, engine, get_grader("math"), turns=3, samples=2, settings=settings
        )
        return [e.record() for e in episodes]

    stand_in_vllm.CALLS.clear()
    together = records(engine)
    requests = [c for c in stand_in_vllm.CALLS if "add_request" in c]
    assert not any("chat" in c for c in stand_in_vllm.CALLS) and len(requests) == 3 * 2 * 3
    first_next_turn = requests[6]  # 6 first turns (3 problems x 2 samples), then the next turns
    assert first_next_turn["waiting"] > 0  # added while first turns were still waiting
    stand_in_vllm.CALLS.clear()
    by_turn = ByTurn(engine)
    assert records(by_turn) == together and by_turn.calls == 3
    sent = [c["chat"] for c in stand_in_vllm.CALLS if "chat" in c]
    rendered = [prompt for call in sent for prompt in call]
    tokenizer = engine.tokenizer
    assert sorted(tokenizer(p, add_special_tokens=False)["input_ids"] for p in rendered) == sorted(
        r["prompt_token_ids"] for r in requests
    )


def test_vllm_with_follow_ups_reports_a_prompt_over_max_model_len_in_its_place(tiny_model_dir, stand_in_vllm):
    from harness.engines.vllm import VLLMEngine

    engine = VLLMEngine.from_model(str(tiny_model_dir), max_model_len=40)
    long = [{"role": "user", "content": "word " * 100}]
    follow = [{"role": "user", "content": "Say yes."}]
    asked = []

    def on_done(index, completions):
        asked.append(index)
        return (follow, 11) if index == 0 else None

    out = engine.chat_with_follow_ups([long, CONVS[0]], SamplingSettings(max_new_tokens=4), on_done, seeds=[1, 2])
    assert [c[0].finish_reason == PROMPT_TOO_LONG for c in out] == [True, False, False]
    assert sorted(asked) == [0, 1, 2] and asked[0] == 0  # the long one first, its follow-up under index 2


def test_vllm_leaves_no_request_in_its_engine_when_a_run_stops_midway(tiny_model_dir, stand_in_vllm):
    """An error (or Ctrl-C) in the loop's callback: the requests still in vLLM's engine are aborted,
    so the next call gets only its own answers."""
    from harness.engines.vllm import VLLMEngine

    engine = VLLMEngine.from_model(str(tiny_model_dir))

    def on_done(index, completions):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.chat_with_follow_ups(CONVS, SamplingSettings(max_new_tokens=4), on_done, seeds=[1, 2, 3])
    assert stand_in_vllm.CALLS[-1] == {"abort_request": ["0", "1"]}  # the last asked is answered first
    assert not engine.llm.llm_engine.has_unfinished_requests()
    out = engine.chat_with_follow_ups(CONVS[:1], SamplingSettings(max_new_tokens=4), None, seeds=[1])
    assert len(out) == 1 and out[0][0].finish_reason != PROMPT_TOO_LONG


def test_openai_retries_429_and_5xx_then_succeeds():
    from harness.engines.openai import OpenAIEngine

    with FakeOpenAIServer(fail_first=[429, 500, 503]) as server:
        engine = OpenAIEngine.from_server(server.base_url, concurrency=1, max_retries=4)
        out = engine.chat(CONVS[:1], SamplingSettings(max_new_tokens=4))
    assert out[0][0].text.startswith("turn 1: What is 1+1?")
    assert len(server.requests) == 4


def test_openai_gives_up_with_one_line_when_the_server_keeps_failing():
    from harness.engines.openai import OpenAIEngine

    with FakeOpenAIServer(fail_first=[500] * 10) as server:
        engine = OpenAIEngine.from_server(server.base_url, concurrency=1, max_retries=1)
        with pytest.raises(HarnessError, match="failed after retries"):
            engine.chat(CONVS[:1], SamplingSettings(max_new_tokens=4))


def test_openai_runs_requests_concurrently_up_to_the_limit():
    from harness.engines.openai import OpenAIEngine

    with FakeOpenAIServer(delay=0.2) as server:
        OpenAIEngine.from_server(server.base_url, concurrency=3).chat(CONVS * 3, SamplingSettings(4))
    assert server.max_in_flight == 3


def test_openai_asks_again_when_the_server_returns_fewer_than_n():
    from harness.engines.openai import OpenAIEngine

    with FakeOpenAIServer(max_n=1) as server:
        out = OpenAIEngine.from_server(server.base_url).chat(
            CONVS[:1], SamplingSettings(4, n=3, temperature=1.0), seeds=[10]
        )
    assert len(out[0]) == 3 and len(server.requests) == 3
    assert [r["body"]["seed"] for r in server.requests] == [10, 11, 12]
    assert [r["body"]["n"] for r in server.requests] == [3, 2, 1]


def test_openai_context_overflow_is_skipped():
    from harness.engines.openai import OpenAIEngine

    with FakeOpenAIServer() as server:
        out = OpenAIEngine.from_server(server.base_url).chat(
            [CONVS[0], [{"role": "user", "content": "TOO_LONG"}]], SamplingSettings(4)
        )
    assert out[1][0].finish_reason == PROMPT_TOO_LONG and out[0][0].finish_reason == "stop"


def test_openai_model_comes_from_the_server_when_there_is_one():
    from harness.engines.openai import OpenAIEngine

    with FakeOpenAIServer(models=["only-one"]) as server:
        assert OpenAIEngine.from_server(server.base_url).model_name == "only-one"
    with FakeOpenAIServer(models=["a", "b"]) as server:
        with pytest.raises(HarnessError, match="serves 2 models .*--model"):
            OpenAIEngine.from_server(server.base_url)


def test_openai_run_end_to_end_never_writes_the_api_key(tmp_path, math500):
    from tests.conftest import run_cli

    secret = "sk-test-secret-4242"
    with FakeOpenAIServer() as server:
        result = run_cli(
            [
                "run",
                "--backend",
                "openai",
                "--base-url",
                server.base_url,
                "--data",
                str(math500),
                "--limit",
                "3",
                "--turns",
                "2",
                "--output-dir",
                str(tmp_path),
                "--run-name",
                "o",
                "--concurrency",
                "2",
            ],
            env={"OPENAI_API_KEY": secret},
        )
        assert result.returncode == 0, result.stderr
        assert {r["authorization"] for r in server.requests} == {f"Bearer {secret}"}
    run_dir = tmp_path / "o"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["config.json", "samples.jsonl", "summary.json", "summary.csv", "summary.md"]
    )
    for path in run_dir.iterdir():
        assert secret not in path.read_text()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["engine"]["backend"] == "openai" and config["model"] == "fake-model"
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [t["response"][:6] for t in samples[0]["turns"]] == ["turn 1", "turn 2"]


def test_api_key_given_on_the_command_line_is_redacted():
    from harness.run import redact_command

    assert redact_command(["x", "--api-key", "sk-1", "--api-key=sk-2", "--turns", "2"]) == [
        "x",
        "--api-key",
        "***",
        "--api-key=***",
        "--turns",
        "2",
    ]


def test_hf_auto_batch_size_halves_on_out_of_memory_and_loses_nothing(tiny_model_dir, monkeypatch):
    """Out of memory mid-generation: the rows in flight are redone at half the batch size, and the
    completions (sampled ones included) are those of a run that never ran out of memory."""
    import functools

    import torch

    from harness.engines.hf import HFEngine

    settings = SamplingSettings(max_new_tokens=4, temperature=1.0, seed=5)
    expected = HFEngine.from_model(str(tiny_model_dir), batch_size=4).chat(CONVS * 4, settings)
    engine = HFEngine.from_model(str(tiny_model_dir), batch_size="auto")
    assert engine.batch_size == 16
    real, failed, done = engine.model.forward, [], []

    @functools.wraps(real)
    def forward(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        if rows > 4:  # memory runs out whenever more than 4 rows go through the model at once
            failed.append(rows)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", forward)
    out = engine.chat(CONVS * 4, settings, on_done=lambda i, cs: done.append(i))
    # The prompts' 3 distinct texts are prefilled once each (their 4 copies share it); the first
    # step of all 12 rows runs out, then the first of 8; 4 rows fit.
    assert engine.batch_size == 4 and failed == [12, 8]
    assert sorted(done) == list(range(12))
    assert [[c.token_ids for c in cs] for cs in out] == [[c.token_ids for c in cs] for cs in expected]


def test_out_of_memory_after_a_row_is_reported_does_not_generate_it_again(varied_engine, monkeypatch):
    """A row that finished is reported (which may queue its next turn) before it leaves the batch,
    and its keys and values are copied for that next turn in between. Memory running out in that
    copy once sent the reported job back to the queue, and the retry generated and reported it a
    second time (found in review, scenario by the reviewer)."""
    from collections import Counter

    import torch

    from harness.engines import jobs, slots

    reports, real_finished = Counter(), jobs.JobQueue.finished
    failed, real_keep = [], slots.SlotDecoder._keep_for_follow_ups

    def finished(self, job, tokens, stopped):
        reports[job.key] += 1
        real_finished(self, job, tokens, stopped)

    def keep(self, index, row, follow_ups):
        if follow_ups and not failed:  # memory runs out once, copying the first finished turn
            failed.append(row.job.key)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_keep(self, index, row, follow_ups)

    monkeypatch.setattr(jobs.JobQueue, "finished", finished)
    monkeypatch.setattr(slots.SlotDecoder, "_keep_for_follow_ups", keep)
    monkeypatch.setattr(varied_engine, "auto_batch", True)
    monkeypatch.setattr(varied_engine, "batch_size", 8)
    firsts = [[{"role": "user", "content": "Tell me about the number " + "seven " * k}] for k in (0, 9, 2, 30)]

    def on_done(index, completions):
        if index >= len(firsts):
            return None
        again = [{"role": "assistant", "content": completions[0].text}, {"role": "user", "content": "Again."}]
        return firsts[index] + again, 0

    out = varied_engine.chat_with_follow_ups(firsts, SamplingSettings(max_new_tokens=8), on_done, [0, 1, 2, 3])
    assert failed and varied_engine.batch_size == 4 and len(out) == 2 * len(firsts)
    assert sorted(reports) == list(range(2 * len(firsts))) and set(reports.values()) == {1}


def test_dtype_reaches_both_local_engines_and_auto_keeps_each_engines_rule(tiny_model_dir, stand_in_vllm):
    """--dtype: hf loads in it (auto: float32 on CPU); vllm gets it (auto: vLLM's own rule, not passed)."""
    import torch

    from harness.config import RunConfig
    from harness.engines import make_engine

    def options(dtype):
        return RunConfig(dtype=dtype, batch_size=2).validate().engine_options()

    assert make_engine("hf", str(tiny_model_dir), options("bfloat16")).model.dtype == torch.bfloat16
    assert make_engine("hf", str(tiny_model_dir), options("auto")).model.dtype == torch.float32
    make_engine("vllm", str(tiny_model_dir), options("float16"))
    make_engine("vllm", str(tiny_model_dir), options("auto"))
    assert [c["init"]["dtype"] for c in stand_in_vllm.CALLS if "init" in c] == ["float16", "auto"]
    with pytest.raises(HarnessError, match="--dtype must be one of"):
        RunConfig(dtype="fp8").validate()


def test_vllm_data_parallel_runs_one_engine_per_replica_on_its_own_gpus(
    tiny_model_dir, stand_in_vllm, tmp_path, monkeypatch
):
    """--data-parallel-size 2 with 2 GPUs per replica (tensor parallel 2) on 4 visible GPUs: two engine
    processes, each seeing its own 2 GPUs, sharing each call's conversations; greedy completions equal
    one engine's."""
    from harness.engines import make_engine
    from harness.engines.vllm import VLLMEngine

    log = tmp_path / "stand_in.jsonl"
    monkeypatch.setenv("VLLM_STAND_IN_LOG", str(log))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    settings = SamplingSettings(max_new_tokens=6)
    expected = [[c.token_ids for c in cs] for cs in VLLMEngine.from_model(str(tiny_model_dir)).chat(CONVS, settings)]
    log.unlink()
    options = {"tensor_parallel_size": 2, "pipeline_parallel_size": 1, "gpu_memory_utilization": 0.9}
    options |= {"max_model_len": None, "seed": 0, "dtype": "auto", "data_parallel_size": 2}
    engine = make_engine("vllm", str(tiny_model_dir), options)
    try:
        done = []
        out = engine.chat(CONVS, settings, on_done=lambda i, cs: done.append(i))
        assert [[c.token_ids for c in cs] for cs in out] == expected and sorted(done) == [0, 1, 2]
        facts = engine.describe()
        assert facts["data_parallel_size"] == 2 and facts["tensor_parallel_size"] == 2
    finally:
        engine.close()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["init"]["CUDA_VISIBLE_DEVICES"] for r in records if "init" in r) == ["4,5", "6,7"]
    chats = [r for r in records if "chat" in r]
    assert sorted(len(r["chat"]) for r in chats) == [1, 2] and len({r["pid"] for r in chats}) == 2


def test_vllm_data_parallel_needs_enough_gpus_and_a_positive_size(stand_in_vllm, monkeypatch):
    from harness.config import RunConfig
    from harness.engines import make_engine

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    options = RunConfig(data_parallel_size=2, tensor_parallel_size=2).validate().engine_options()
    with pytest.raises(HarnessError, match="--data-parallel-size 2 .* needs 4 GPUs, but 3 are visible"):
        make_engine("vllm", None, options)
    with pytest.raises(HarnessError, match="--data-parallel-size must be at least 1 \\(got 0\\)"):
        RunConfig(data_parallel_size=0).validate()


def test_conversations_are_shared_out_among_replicas_in_turn():
    from harness.engines.vllm_replicas import shares

    assert shares(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert shares(1, 2) == [[0], []]
