"""The transformers engine on a tiny random-weight Llama with the embedded tokenizer."""

import pytest

from harness.engines.base import SamplingSettings
from harness.engines.hf import HFEngine

CONVS = [
    [{"role": "user", "content": "What is 1+1?"}],
    [{"role": "user", "content": "A much longer question, so that this prompt needs no padding at all " * 3}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ],
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine.from_model(str(tiny_model_dir), batch_size=8)


def test_prompt_is_the_tokenizers_chat_template(engine):
    text = engine.render(CONVS[2])
    assert text.count("<|im_start|>user") == 2 and text.count("<|im_start|>assistant") == 2
    assert text.endswith("<|im_start|>assistant\n")


def test_left_padded_batch_gives_the_same_greedy_text_as_one_at_a_time(engine):
    settings = SamplingSettings(max_new_tokens=12)
    batched = [c[0].text for c in engine.chat(CONVS, settings)]
    engine.batch_size = 1
    try:
        single = [c[0].text for c in engine.chat(CONVS, settings)]
    finally:
        engine.batch_size = 8
    assert batched == single


def test_completions_come_back_in_input_order_with_counts(engine):
    settings = SamplingSettings(max_new_tokens=5, n=2, temperature=1.0, seed=3)
    out = engine.chat(CONVS, settings)
    assert [len(c) for c in out] == [2, 2, 2]
    prompt_lengths = [len(engine.tokenizer(engine.render(c), add_special_tokens=False)["input_ids"]) for c in CONVS]
    assert [c[0].prompt_tokens for c in out] == prompt_lengths
    for completions in out:
        for c in completions:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.completion_tokens <= 5
            if c.finish_reason == "length":
                assert c.completion_tokens == 5


def test_sampling_is_repeatable_with_a_seed_and_varies_without(engine):
    def texts(seed):
        return [c.text for cs in engine.chat(CONVS, SamplingSettings(12, temperature=1.0, n=2, seed=seed)) for c in cs]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


def test_each_conversation_is_reported_done_once_with_all_its_completions(engine):
    seen = []
    out = engine.chat(CONVS, SamplingSettings(2, n=2), on_done=lambda i, cs: seen.append((i, list(cs))))
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert all(cs == out[i] and len(cs) == 2 for i, cs in seen)


def test_prompt_longer_than_the_context_is_not_generated(engine, monkeypatch):
    from harness.engines.base import PROMPT_TOO_LONG

    short, long = CONVS[0], [{"role": "user", "content": "word " * 300}]
    monkeypatch.setattr(engine.model.config, "max_position_embeddings", 100)
    out = engine.chat([short, long], SamplingSettings(4))
    assert out[0][0].finish_reason != PROMPT_TOO_LONG
    assert out[1][0].finish_reason == PROMPT_TOO_LONG and out[1][0].text == ""
