"""The llamacpp engine on the embedded SmolLM2 model (its float32 copy), through the real
llama-cpp-python (skipped only where it is not installed; `bash scripts/install.sh test` installs it).

What is checked: the slots change nothing (greedy outputs with 1, 4 and 8 slots are identical, and
equal to llama-cpp-python's own `Llama.create_chat_completion`); a sampled completion depends on its
conversation's seed alone; the prompt is the one the hf engine builds; the limits (prompt too long,
context full, max_new_tokens, stop) end completions with the right finish reason; and a whole run
goes through the CLI.
"""

import json
import sys

import pytest

from harness.engines.base import PROMPT_TOO_LONG, SamplingSettings
from harness.errors import HarnessError
from tests.conftest import run_cli

CONVS = [
    [{"role": "user", "content": "What is 12 + 7? Answer with the number only."}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "There might be an error in the solution above. Try again."},
    ],
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "How are you today?"}],
    [{"role": "user", "content": "Compute 3 * 4 - 5 step by step, then write the result as 'Answer: <number>'."}],
]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/install.sh test)")


@pytest.fixture(scope="module")
def engines(llama_cpp):
    """Engines on the embedded GGUF by number of slots (small contexts keep the KV cache small)."""
    from harness.engines.llamacpp import LlamaCppEngine

    # One thread: llama.cpp's threads wait for each other by spinning, which crawls on a busy shared
    # machine; the CLI test below runs the default (every core).
    return {
        parallel: LlamaCppEngine.from_model(None, parallel=parallel, n_ctx=512, threads=1) for parallel in (1, 4, 8)
    }


def ids_and_reasons(out):
    return [[(c.token_ids, c.finish_reason, c.text) for c in completions] for completions in out]


def test_greedy_outputs_are_the_same_whatever_the_number_of_slots(engines, monkeypatch, llama_cpp):
    # Six conversations on four slots: two wait for a slot, and once none waits, finished slots
    # leave gaps that are closed by moving the last busy sequence (a KV stream copy).
    copies = []
    real_copy = llama_cpp.llama_memory_seq_cp
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_cp", lambda *args: copies.append(args[1:3]) or real_copy(*args))
    settings = SamplingSettings(max_new_tokens=40)
    alone = ids_and_reasons(engines[1].chat(CONVS, settings))
    assert copies == []  # one slot: nothing to move
    assert ids_and_reasons(engines[4].chat(CONVS, settings)) == alone
    assert copies, "no sequence was moved, so the four-slot run did not exercise compaction"
    assert ids_and_reasons(engines[8].chat(CONVS, settings)) == alone
    # The outputs are real text, some stopped and some cut at max_new_tokens.
    reasons = {c[0][1] for c in alone}
    assert reasons == {"stop", "length"} and all(c[0][2].strip() for c in alone)


def test_a_lone_token_computes_as_it_does_in_a_batch(engines):
    """llama.cpp computes a one-token call by other arithmetic (logits up to 0.007 apart on the
    float32 copy, measured); the engine gives a lone decode token a companion so this cannot happen."""
    import numpy as np

    engine = engines[4]
    lib = engine.lib
    prompt = engine.tokenize(engine.render(CONVS[1]))

    def logits_of_sequence_0(rows: int):
        lib.llama_memory_clear(engine._memory, True)
        for seq in range(rows):
            engine._prefill(seq, prompt)
        engine._run([(seq, len(prompt), 504) for seq in range(rows)], spare=rows)
        return np.ctypeslib.as_array(lib.llama_get_logits(engine._ctx), shape=(rows, engine.n_vocab))[0].copy()

    try:
        assert np.array_equal(logits_of_sequence_0(1), logits_of_sequence_0(3))
    finally:
        lib.llama_memory_clear(engine._memory, True)


def test_greedy_matches_llama_cpp_pythons_own_chat_completion(llama_cpp):
    """The reference: llama-cpp-python's high-level API, one conversation at a time, temperature 0
    (its greedy sampler), on the same file with the same attention kernel. The file is the embedded
    Q4_1 one, whose arithmetic does not depend on how many tokens a call carries; on the float32
    copy the reference's one-token steps compute otherwise (see the test above)."""
    from harness.engines.llamacpp import LlamaCppEngine
    from harness.models import embedded_gguf

    engine = LlamaCppEngine.from_model(str(embedded_gguf()), parallel=4, n_ctx=512, threads=1)
    reference = llama_cpp.Llama(
        model_path=str(engine.model_path), n_ctx=512, n_threads=1, n_threads_batch=1, flash_attn=True, verbose=False
    )
    ours = engine.chat(CONVS[:3], SamplingSettings(max_new_tokens=40))
    for conversation, (completion,) in zip(CONVS[:3], ours):
        theirs = reference.create_chat_completion(conversation, temperature=0.0, max_tokens=40)
        choice = theirs["choices"][0]
        assert completion.text == choice["message"]["content"]
        assert completion.finish_reason == choice["finish_reason"]
        assert completion.prompt_tokens == theirs["usage"]["prompt_tokens"]
        # Their count leaves out the end-of-generation token; ours includes it (the hf engine's count).
        stopped = completion.finish_reason == "stop"
        assert completion.completion_tokens == theirs["usage"]["completion_tokens"] + stopped


def test_sampling_depends_on_the_conversations_seed_not_its_neighbours(engines):
    settings = SamplingSettings(max_new_tokens=16, temperature=1.0, top_p=0.9, n=2)
    alone = engines[1].chat([CONVS[1]], settings, seeds=[77])[0]
    mixed = engines[4].chat([CONVS[0], CONVS[3], CONVS[1], CONVS[2]], settings, seeds=[5, 6, 77, 8])[2]
    assert [c.token_ids for c in mixed] == [c.token_ids for c in alone]
    assert alone[0].token_ids != alone[1].token_ids  # the two samples draw from different streams
    other_seed = engines[4].chat([CONVS[1]], settings, seeds=[78])[0]
    assert other_seed[0].token_ids != alone[0].token_ids


def test_prompt_longer_than_the_context_is_reported_not_run(llama_cpp):
    from harness.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine.from_model(None, parallel=2, n_ctx=64, threads=1)
    long = [{"role": "user", "content": "Repeat after me: " + "one two three " * 30}]
    out = engine.chat([long, CONVS[1]], SamplingSettings(max_new_tokens=200))
    too_long, poem = out[0][0], out[1][0]
    assert too_long.finish_reason == PROMPT_TOO_LONG and too_long.completion_tokens == 0 and too_long.text == ""
    assert too_long.prompt_tokens == len(engine.tokenize(engine.render(long))) >= 64
    # The poem fills the context: prompt and completion together hold exactly n_ctx tokens.
    assert poem.finish_reason == "length" and poem.prompt_tokens + poem.completion_tokens == 64


def test_finish_reasons_and_token_ids(engines):
    out = engines[4].chat(CONVS, SamplingSettings(max_new_tokens=40))
    engine = engines[4]
    for conversation, (c,) in zip(CONVS, out):
        assert list(c.prompt_token_ids) == engine.tokenize(engine.render(conversation))
        assert c.prompt_tokens == len(c.prompt_token_ids) and c.completion_tokens == len(c.token_ids)
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in engine.stop_ids and len(c.token_ids) <= 40
            assert engine.detokenize(c.token_ids[:-1]) == c.text
        else:
            assert c.finish_reason == "length" and len(c.token_ids) == 40
            assert engine.detokenize(c.token_ids) == c.text
        assert not set(c.token_ids[:-1]) & engine.stop_ids


def test_prompt_text_and_ids_are_the_hf_engines(engines, embedded_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint)
    engine = engines[1]
    for conversation in CONVS:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert engine.render(conversation) == text
        assert engine.tokenize(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
    sample = "Déjà vu: 3×4 = 12, naïve café 🙂\n\tdone<|im_end|>"
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert engine.detokenize(ids) == tokenizer.decode(ids, skip_special_tokens=True)


def test_default_model_runs_a_float32_copy_holding_the_hf_checkpoints_weights(engines, embedded_checkpoint):
    """The expected weights come from transformers' own GGUF reader (gguf-py's numpy dequantisation,
    code that is not llama.cpp's), through the checkpoint the hf engine loads."""
    import numpy as np
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    from harness.models import cache_dir, embedded_gguf

    path = engines[1].model_path
    assert path.parent == cache_dir() and path.suffix == ".gguf" and path != embedded_gguf()
    assert all(engine.model_path == path for engine in engines.values())  # made once, then reused
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    assert {t.tensor_type.name for t in tensors.values()} == {"F32"}
    hf = load_file(embedded_checkpoint / "model.safetensors")
    names = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj"}
    names |= {"ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm"}
    pairs = [("token_embd.weight", "model.embed_tokens.weight")]
    pairs += [(f"blk.{i}.{g}.weight", f"model.layers.{i}.{h}.weight") for i in (0, 17, 29) for g, h in names.items()]
    for ours, theirs in pairs:
        weights = np.asarray(tensors[ours].data).reshape(hf[theirs].shape)
        assert np.array_equal(weights, hf[theirs]), ours
    # Query and key rows are stored in another order (llama.cpp's rotary layout); the values are the same.
    for i in (0, 29):
        for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj")):
            weights = np.sort(np.asarray(tensors[f"blk.{i}.{g}.weight"].data).ravel())
            assert np.array_equal(weights, np.sort(hf[f"model.layers.{i}.self_attn.{h}.weight"].ravel()))


def test_a_gguf_file_passed_with_model_runs_as_it_is(engines, llama_cpp):
    from harness.engines.llamacpp import LlamaCppEngine, float32_copy
    from harness.models import embedded_gguf

    engine = LlamaCppEngine.from_model(str(embedded_gguf()), parallel=1, n_ctx=256, threads=1)
    assert engine.model_path == embedded_gguf()
    # And the float32 copy, made once, is not written again.
    copy = engines[1].model_path
    written = copy.stat().st_mtime_ns
    assert float32_copy(llama_cpp, embedded_gguf()) == copy and copy.stat().st_mtime_ns == written


def test_each_conversation_is_reported_once_and_n_completions_come_in_order(engines):
    seen = []
    settings = SamplingSettings(max_new_tokens=4, n=3, temperature=1.0)
    out = engines[4].chat(CONVS[:3], settings, on_done=lambda i, cs: seen.append((i, cs)))
    assert sorted(i for i, _ in seen) == [0, 1, 2] and all(out[i] == cs for i, cs in seen)
    assert [len(c) for c in out] == [3, 3, 3]


def test_run_end_to_end_through_the_cli(tmp_path, llama_cpp):
    args = ["run", "--backend", "llamacpp", "--task", "arithmetic", "--limit", "4", "--turns", "2"]
    args += ["--max-new-tokens", "16", "--parallel", "3", "--n-ctx", "512"]
    result = run_cli([*args, "--output-dir", str(tmp_path), "--run-name", "lc"])
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "lc"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n"] == 4 and summary["run"]["backend"] == "llamacpp"
    engine = json.loads((run_dir / "config.json").read_text())["engine"]
    assert (engine["backend"], engine["parallel"], engine["n_ctx"]) == ("llamacpp", 3, 512)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    assert all(len(s["turns"]) == 2 and 0 < t["completion_tokens"] <= 16 for s in samples for t in s["turns"])


def test_missing_llama_cpp_is_one_clear_error(monkeypatch):
    from harness.config import RunConfig
    from harness.engines import make_engine

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(HarnessError, match=r"pip install 'score-eval\[llamacpp\]'"):
        make_engine("llamacpp", None, RunConfig(backend="llamacpp").validate().engine_options())


def test_a_checkpoint_directory_is_refused_with_the_fix(tmp_path):
    from harness.models import resolve_gguf

    with pytest.raises(HarnessError, match=r"runs a \.gguf file.*--backend hf"):
        resolve_gguf(str(tmp_path))
    with pytest.raises(HarnessError, match=r"does not exist"):
        resolve_gguf(str(tmp_path / "missing.gguf"))


def test_the_trainer_takes_llamacpp_rollouts_for_the_embedded_model_only():
    from harness.train.config import TrainConfig

    TrainConfig(rollout_backend="llamacpp").validate()
    with pytest.raises(HarnessError, match=r"embedded default model only.*leave out --model"):
        TrainConfig(rollout_backend="llamacpp", model="some/checkpoint").validate()


@pytest.fixture(scope="module")
def trainee(llama_cpp):
    from harness.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine.for_training(parallel=2, n_ctx=256, threads=1)


def test_load_weights_puts_each_hf_parameter_where_llama_cpp_keeps_it(trainee, llama_cpp, embedded_checkpoint):
    """Zeros first (every tensor is written), then the hf checkpoint's weights: the file then equals
    the float32 copy, tensor for tensor, query and key rows in llama.cpp's rotary order included."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from safetensors.torch import load_file

    from harness.engines.llamacpp import float32_copy
    from harness.models import embedded_gguf

    hf = load_file(embedded_checkpoint / "model.safetensors")
    trainee.load_weights((name, torch.zeros_like(tensor)) for name, tensor in hf.items())
    assert all(not np.asarray(t.data).any() for t in GGUFReader(trainee.model_path).tensors)
    trainee.load_weights(hf.items())
    expected = {t.name: np.asarray(t.data) for t in GGUFReader(float32_copy(llama_cpp, embedded_gguf())).tensors}
    written = {t.name: np.asarray(t.data) for t in GGUFReader(trainee.model_path).tensors}
    assert written.keys() == expected.keys()
    assert [name for name in expected if not np.array_equal(written[name], expected[name])] == []


def test_the_next_generation_uses_the_loaded_weights(trainee, embedded_checkpoint):
    """llama.cpp maps the file shared, so weights written into it change the running engine's
    output, with no reload: the same output as an engine started afresh on the file."""
    import torch
    from safetensors.torch import load_file

    from harness.engines.llamacpp import LlamaCppEngine

    name = "model.layers.0.mlp.down_proj.weight"
    original = load_file(embedded_checkpoint / "model.safetensors")[name]
    settings = SamplingSettings(max_new_tokens=12)
    before = trainee.chat(CONVS[1:2], settings)[0][0].token_ids
    trainee.load_weights([(name, torch.zeros_like(original))])
    try:
        after = trainee.chat(CONVS[1:2], settings)[0][0].token_ids
        fresh = LlamaCppEngine(trainee.lib, trainee.model_path, "fresh", parallel=1, n_ctx=256, threads=1)
        assert after != before and after == fresh.chat(CONVS[1:2], settings)[0][0].token_ids
    finally:
        trainee.load_weights([(name, original)])
    assert trainee.chat(CONVS[1:2], settings)[0][0].token_ids == before


def test_decode_steps_run_slots_0_to_k_and_a_lone_step_has_company(llama_cpp, monkeypatch):
    """llama.cpp computes a sequence after a gap apart, as a lone token; a row that ends on its
    first token frees its slot at once, which left a gap while others still waited (found in
    review). So every decode step must carry slots 0..k-1, and a one-row step its companion."""
    from harness.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine.from_model(None, parallel=3, n_ctx=512, threads=1)
    first = engine.chat(CONVS, SamplingSettings(max_new_tokens=1))
    # The first token of the second prompt admitted (longest first) ends its row at once.
    order = sorted(range(len(CONVS)), key=lambda i: -first[i][0].prompt_tokens)
    monkeypatch.setattr(engine, "stop_ids", engine.stop_ids | {first[order[1]][0].token_ids[0]})
    steps = []
    real = engine._run

    def spy(tokens, last_only=False, spare=None):
        if not last_only:  # a decode step (prompt pieces ask the last logits only)
            steps.append(([seq for seq, _, _ in tokens], spare))
        return real(tokens, last_only, spare)

    monkeypatch.setattr(engine, "_run", spy)
    out = engine.chat(CONVS, SamplingSettings(max_new_tokens=12))
    assert any(c[0].completion_tokens == 1 for c in out)  # a row did end on its first token
    assert steps and all(seqs == list(range(len(seqs))) for seqs, _ in steps)
    assert any(len(seqs) == 1 for seqs, _ in steps) and all(spare == len(seqs) for seqs, spare in steps)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_one_call_with_follow_ups_gives_the_turn_by_turn_records(engines, temperature):
    from harness.data import Problem
    from harness.episodes import run_episodes
    from harness.grading import get_grader
    from harness.tasks import load_task
    from tests.test_episodes_follow_ups import ByTurn

    problems = [
        Problem(f"p{i}", str(2 * i), {"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) for i in range(3)
    ]
    settings = SamplingSettings(max_new_tokens=12, temperature=temperature, seed=4)

    def records(engine):
        episodes = run_episodes(
            load_task("math"), problems, engine, get_grader("math"), turns=2, samples=2, settings=settings
        )
        return [e.record() for e in episodes]

    by_turn = ByTurn(engines[4])
    assert records(engines[4]) == records(by_turn) and by_turn.calls == 2


def test_train_with_llamacpp_rollouts_end_to_end(tmp_path, llama_cpp):
    """The embedded model, one step of each stage, rollouts sampled by llama.cpp from the float32
    copy that takes the policy's weights after every step."""
    from harness.train.config import SMOKE_DATA

    out = tmp_path / "score"
    args = ["train", "--data", str(SMOKE_DATA), "--output-dir", str(out), "--rollout-backend", "llamacpp"]
    args += ["--stage1-steps", "1", "--stage2-steps", "1", "--batch-size", "2", "--samples", "2"]
    result = run_cli([*args, "--micro-batch-size", "2", "--max-new-tokens", "8", "--seed", "3"])
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["rollout_backend"] == "llamacpp"
    log = (out / "train_log.csv").read_text().splitlines()
    assert len(log) == 3 and (out / "stage2" / "config.json").is_file()


def last_logits(engine, prompt: list[int], cuts: list[int]):
    """The last token's logits of `prompt` computed alone (in the spare sequence), cut at `cuts`."""
    import numpy as np

    seq, lib = engine.parallel, engine.lib
    lib.llama_memory_seq_rm(engine._memory, seq, -1, -1)
    for a, b in zip([0, *cuts], [*cuts, len(prompt)]):
        engine._run([(seq, j, prompt[j]) for j in range(a, b)], last_only=True)
    logits = np.ctypeslib.as_array(lib.llama_get_logits(engine._ctx), shape=(engine.n_vocab,)).copy()
    lib.llama_memory_seq_rm(engine._memory, seq, -1, -1)
    return logits


def test_a_prompt_cut_into_pieces_of_64_tokens_or_more_computes_as_it_does_whole(engines, llama_cpp):
    """What keeping a slot's prompt tokens rests on (llamacpp.MIN_PIECE), on both embedded files:
    a cut leaving 64 tokens gives the logits of the whole prompt bit for bit; one leaving 63 does
    not, so the engine's own check (reuses_prompts) is not true of any cut."""
    import numpy as np

    from harness.engines.llamacpp import MIN_PIECE, LlamaCppEngine
    from harness.models import embedded_gguf

    q4 = LlamaCppEngine.from_model(str(embedded_gguf()), parallel=1, n_ctx=512, threads=1)
    for engine in (engines[1], q4):
        assert engine.reuses_prompts()
        prompt = (engine.tokenize("Find all real x such that x^2 - 5x + 6 = 0, and explain. ") * 20)[:200]
        whole = last_logits(engine, prompt, [])
        assert np.array_equal(last_logits(engine, prompt, [len(prompt) - MIN_PIECE]), whole)
        assert np.array_equal(last_logits(engine, prompt, [MIN_PIECE, 2 * MIN_PIECE]), whole)
        assert not np.array_equal(last_logits(engine, prompt, [len(prompt) - MIN_PIECE + 1]), whole)


STEPS = "Show each step of your work, check the result by a second method, and say which of the two you trust more."


@pytest.mark.parametrize("parallel", [1, 4])
def test_prompt_tokens_kept_in_a_slot_change_no_token(engines, monkeypatch, llama_cpp, parallel):
    """MATH prompts (about 130 tokens, 90 of them the template and instruction every problem shares)
    over two turns: with a slot keeping what the next prompt shares with its last one (the next
    turn takes its own slot and keeps its whole first prompt; a first slot copies another's stream),
    greedy and sampled records equal those of every prompt computed whole, while far fewer prompt
    tokens are computed."""
    from harness.data import Problem
    from harness.episodes import run_episodes
    from harness.grading import get_grader
    from harness.tasks import load_task

    engine = engines[parallel]
    problems = [
        Problem(f"p{i}", str(i * i), {"problem": f"What is {i} squared? {STEPS}", "answer": str(i * i)})
        for i in range(5)
    ]
    computed, copies = [], []
    real_prefill, real_copy = engine._prefill, llama_cpp.llama_memory_seq_cp

    def prefill(seq, prompt, start=0):
        computed.append(len(prompt) - start)
        real_prefill(seq, prompt, start)

    monkeypatch.setattr(engine, "_prefill", prefill)
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_cp", lambda *args: copies.append(args[1:3]) or real_copy(*args))

    def records(temperature):
        settings = SamplingSettings(max_new_tokens=16, temperature=temperature, seed=9)
        episodes = run_episodes(
            load_task("math"), problems, engine, get_grader("math"), turns=2, samples=1, settings=settings
        )
        return [e.record() for e in episodes]

    kept = [records(0.0), records(1.0)]
    kept_tokens, kept_copies = sum(computed), len(copies)
    computed.clear()
    monkeypatch.setattr(engine, "_reuses_prompts", False)
    assert [records(0.0), records(1.0)] == kept
    assert kept_tokens < 0.6 * sum(computed)
    assert (kept_copies > 0) == (parallel > 1)


def test_a_slot_keeps_what_the_next_prompt_shares_leaving_64_tokens_to_compute():
    from harness.engines.llamacpp import reusable

    held = list(range(200))
    assert reusable(held, list(range(92)) + [-1] * 110) == 92  # shares 92, 110 left to compute
    assert reusable(held, list(range(90)) + [-1] * 110) == 88  # shares 90: down to a multiple of 4
    assert reusable(held, list(range(150)) + [-1] * 50) == 136  # shares 150, but 200 - 64 = 136
    assert reusable(held, held + [-1] * 10) == 144  # a next turn: 210 tokens, 200 held, 210 - 64 = 146
    assert reusable(held[:150], held[:150] + [-1] * 80) == 148  # not held's last 150 % 4 tokens
    assert reusable(held, list(range(63))) == 0  # under 64 tokens: computed whole
    assert reusable(held, [-1] + list(range(1, 100))) == 0
    assert reusable([], list(range(100))) == 0


@pytest.fixture(scope="module")
def q4_k_m(llama_cpp, tmp_path_factory):
    """An engine on a Q4_K_M copy of the embedded model: llama.cpp repacks its Q4_K tensors on x86
    (CPU_REPACK) and multiplies them four rows of a call at a time, from the call's start, and the
    last len % 4 rows one by one, by other arithmetic (activations quantised by the same split)."""
    import ctypes

    from harness.engines.llamacpp import LlamaCppEngine, float32_copy
    from harness.models import embedded_gguf

    path = tmp_path_factory.mktemp("q4_k_m") / "q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    source = str(float32_copy(llama_cpp, embedded_gguf())).encode()
    assert llama_cpp.llama_model_quantize(source, str(path).encode(), ctypes.byref(params)) == 0
    return LlamaCppEngine(llama_cpp, path, "q4_k_m", parallel=1, n_ctx=512, threads=1)


def test_kept_prompt_tokens_give_the_whole_prompts_logits_on_a_file_with_repacked_weights(q4_k_m):
    """Found in review: on a Q4_K_M file a cut into pieces of 64+ changed the logits by up to 0.9
    (35 of the 74 single cuts of a 201-token prompt; the probe's 128 + 64 did not, so it passed the
    file), and a slot kept tokens wherever the prompts parted. Each case: the slot ran `before`,
    then keeps what the engine keeps of it for `prompt` and computes the rest, which must give the
    logits of `prompt` computed whole. Shared 66, 70 and 90 tokens cut inside a group of four rows;
    150 shares all of `before`, whose last 2 rows its own call computed one by one."""
    import numpy as np

    from harness.engines.llamacpp import reusable

    engine, lib = q4_k_m, q4_k_m.lib
    text = engine.tokenize("Find all real x such that x^2 - 5x + 6 = 0, and explain. ") * 20
    other = engine.tokenize("Prove that the square root of two is irrational, step by step. ") * 20

    def logits():
        return np.ctypeslib.as_array(lib.llama_get_logits(engine._ctx), shape=(engine.n_vocab,)).copy()

    assert engine.reuses_prompts()
    differ = []
    try:
        for shared, length in ((66, 201), (70, 201), (90, 201), (150, 230)):
            before, prompt = text[:150], text[:shared] + other[: length - shared]
            lib.llama_memory_clear(engine._memory, True)
            engine._prefill(0, prompt)
            whole = logits()
            lib.llama_memory_clear(engine._memory, True)
            engine._prefill(0, before)
            kept = reusable(before, prompt)
            lib.llama_memory_seq_rm(engine._memory, 0, kept, -1)
            engine._prefill(0, prompt, kept)
            if not np.array_equal(logits(), whole):
                differ.append((shared, kept))
    finally:
        lib.llama_memory_clear(engine._memory, True)
    assert differ == []


def test_a_context_too_small_for_the_probe_generates_and_keeps_no_prompt_tokens(llama_cpp):
    """Found in review: the probe computes its whole prompt in one call, and llama.cpp caps a call
    at the context's n_batch, which is n_ctx x (parallel + 1) when that is under 512; past it
    llama.cpp aborts the process (GGML_ASSERT n_tokens_all <= n_batch), so one slot of 64 tokens
    killed every run at its first generation. Run apart, so an abort fails this test alone."""
    import subprocess

    code = (
        "from harness.engines.base import SamplingSettings\n"
        "from harness.engines.llamacpp import LlamaCppEngine\n"
        "e = LlamaCppEngine.from_model(None, parallel=1, n_ctx=64, threads=1)\n"
        "out = e.chat([[{'role': 'user', 'content': 'Say hello.'}]], SamplingSettings(max_new_tokens=4))\n"
        "print(out[0][0].completion_tokens, e.reuses_prompts())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["4", "False"]


def test_a_memory_that_cannot_drop_the_end_of_a_sequence_keeps_no_prompt_tokens(engines, monkeypatch, llama_cpp):
    """llama_memory_seq_rm says False where it cannot remove part of a sequence (a recurrent model's
    state); the slot then starts from nothing instead of keeping what it could not cut (from review)."""
    engine = engines[4]
    conversations = [[{"role": "user", "content": f"What is {i} squared? {STEPS} {STEPS}"}] for i in range(6)]
    settings = SamplingSettings(max_new_tokens=8)
    starts = []
    real_prefill = engine._prefill

    def prefill(seq, prompt, start=0):
        starts.append(start)
        real_prefill(seq, prompt, start)

    monkeypatch.setattr(engine, "_prefill", prefill)
    kept = engine.chat(conversations, settings)
    assert any(starts)  # prompt tokens were kept
    starts.clear()
    real = llama_cpp.llama_memory_seq_rm
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", lambda mem, seq, p0, p1: p0 <= 0 and real(mem, seq, p0, p1))
    assert ids_and_reasons(engine.chat(conversations, settings)) == ids_and_reasons(kept)
    assert starts and not any(starts)
