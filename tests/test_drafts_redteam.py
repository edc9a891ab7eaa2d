"""Attacks on draft tokens (slots.py _step/_drafts/_verify) and gqa_attention.apply: models and
schedules the tests in test_engine_drafts.py do not meet."""

from __future__ import annotations

import pytest

from harness.engines.base import SamplingSettings
from tests.test_engine_drafts import count_drafted


def token_ids(out) -> list[list[tuple[int, ...]]]:
    return [[c.token_ids for c in cs] for cs in out]


def tiny_engine(model_class, config_class, tiny_model_dir, **config):
    """The hf engine on a tiny random model of `model_class` with the embedded tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from harness.engines.hf import HFEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    model = model_class(config_class(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **ids, **config))
    return HFEngine(model.eval(), tokenizer, model_class.__name__, batch_size=8)


def test_padding_after_a_short_draft_gets_no_position_past_its_rows_own(tiny_model_dir, monkeypatch):
    """A model with learned absolute positions (GPT-2, 64 of them) and a 59-token prompt whose 6
    new tokens end at position 63, decoded beside a follow-up that still has drafts when the long
    row has one token left (and so no draft): the long row's padding after its one fed token must
    not be given positions 64 and beyond, which the model has no embedding for (IndexError). Drafts
    are guesses, and the guarantee holds whatever they are: here every row guesses that its last
    token repeats, so every row that may take more than one token has a draft."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.engines.drafts import PromptLookup

    sizes = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "initializer_range": 0.2}
    engine = tiny_engine(GPT2LMHeadModel, GPT2Config, tiny_model_dir, **sizes)
    engine.stop_ids = set()
    # The chat template is 30 tokens; "a", then " c", " a", ... one token each: 59 in all.
    long = [{"role": "user", "content": " ".join(["a", "c"] * 14 + ["a"])}]
    short = [{"role": "user", "content": "q r q r"}]
    assert len(engine.encode(long)) == 64 - 6 + 1
    settings = SamplingSettings(max_new_tokens=6)
    engine.draft_tokens = 0
    free = token_ids(engine.chat([long, short], settings))
    # The short row stops at its second token (the long row never emits it) and its follow-up
    # starts then, four tokens behind the long row.
    engine.stop_ids = {free[1][0][1]}
    assert engine.stop_ids.isdisjoint(free[0][0])

    def on_done(index, completions):
        if index == 1:
            answer = {"role": "assistant", "content": completions[0].text}
            return short + [answer, {"role": "user", "content": "q r"}], 0
        return None

    expected = token_ids(engine.chat_with_follow_ups([long, short], settings, on_done, [0, 0]))
    monkeypatch.setattr(PromptLookup, "draft", lambda self, count: [self.ids[-1]] * count)
    engine.draft_tokens = 8
    assert token_ids(engine.chat_with_follow_ups([long, short], settings, on_done, [0, 0])) == expected


def test_generation_attention_gives_back_each_sub_configs_own_attention():
    """A model whose configs differ (Gemma 3: text on sdpa, its vision tower on eager, as a
    per-sub-config attn_implementation loads it): inside the block only the sdpa ones switch, and
    after it each has its own again, not "sdpa" written over all of them."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from harness.engines import gqa_attention

    text = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "head_dim": 16}
    text |= {"num_attention_heads": 2, "num_key_value_heads": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision |= {"image_size": 28, "patch_size": 14}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    config._attn_implementation = {"": "sdpa", "text_config": "sdpa", "vision_config": "eager"}
    model = Gemma3ForConditionalGeneration(config).eval()

    def attention():
        configs = (model.config, model.config.text_config, model.config.vision_config)
        return [c._attn_implementation for c in configs]

    assert attention() == ["sdpa", "sdpa", "eager"]
    with gqa_attention.apply(model):
        assert attention() == [gqa_attention.NAME, gqa_attention.NAME, "eager"]
    assert attention() == ["sdpa", "sdpa", "eager"]


def sliding_window_engine(tiny_model_dir):
    """The hf engine on a tiny random Mistral whose sliding window (12 tokens) is shorter than its rows."""
    from transformers import MistralConfig, MistralForCausalLM

    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    sizes |= {"num_key_value_heads": 1, "sliding_window": 12, "initializer_range": 0.2, "tie_word_embeddings": True}
    return tiny_engine(MistralForCausalLM, MistralConfig, tiny_model_dir, **sizes)


def test_drafts_give_the_tokens_of_one_token_steps_on_a_sliding_window_model(tiny_model_dir):
    """Sliding-window attention (Mistral, window 12) counts its window in cache columns; a rejected
    draft's masked columns inside a row's span would push its older tokens out of the window (the
    greedy tokens of every prompt here changed), so such a model decodes one token a row."""
    engine = sliding_window_engine(tiny_model_dir)
    engine.batch_size = 16
    echo = [[{"role": "user", "content": "Say it again: " + "one two three " * k}] for k in (1, 4, 2, 7, 3)]
    settings = SamplingSettings(max_new_tokens=40)
    engine.draft_tokens = 0
    expected = token_ids(engine.chat(echo, settings))
    engine.draft_tokens = 8
    assert token_ids(engine.chat(echo, settings)) == expected
    assert engine.describe()["draft_tokens"] == 0  # what the run's config.json records


# Prompts that repeat themselves (drafts are found), of many lengths (rows finish apart).
REPEATS = [[{"role": "user", "content": "Repeat: " + "one two three " * k}] for k in (0, 1, 3, 5, 9, 14, 2, 20)]


def k_turn_token_ids(engine, settings, turns=3):
    """Each (conversation, turn)'s tokens over one chat_with_follow_ups call; a next turn restates
    the answer before, so its drafts from its prompt are mostly right."""
    meta = {i: (i, 0, conv) for i, conv in enumerate(REPEATS)}

    def on_done(index, completions):
        first, turn, conv = meta[index]
        if turn + 1 >= turns:
            return None
        text = completions[0].text
        conv = conv + [{"role": "assistant", "content": text}, {"role": "user", "content": "Again: " + text}]
        meta[len(meta)] = (first, turn + 1, conv)
        return conv, first

    out = engine.chat_with_follow_ups(REPEATS, settings, on_done, list(range(len(REPEATS))))
    return sorted((meta[i][:2], [c.token_ids for c in cs]) for i, cs in enumerate(out))


@pytest.mark.parametrize("batch_size", [6, 30])
def test_drafts_give_the_tokens_of_one_token_steps_over_follow_up_turns(varied_engine, monkeypatch, batch_size):
    """Three turns, rows stopping apart: follow-ups continue kept keys and values (a finished row's
    own columns, holes left out); with 6 slots they queue behind first turns and take finished rows'
    places or are joined, drafts coming once rows free up; with 30 every slot is free from the start."""
    engine = varied_engine
    monkeypatch.setattr(engine, "draft_tokens", 0)
    free = token_ids(engine.chat(REPEATS, SamplingSettings(max_new_tokens=12)))
    stops = {free[1][0][2], free[4][0][6], free[6][0][9]}
    monkeypatch.setattr(engine, "stop_ids", engine.stop_ids | stops)
    monkeypatch.setattr(engine, "batch_size", batch_size)
    settings = SamplingSettings(max_new_tokens=20)
    expected = k_turn_token_ids(engine, settings)
    monkeypatch.setattr(engine, "draft_tokens", 8)
    counts = count_drafted(monkeypatch)
    assert k_turn_token_ids(engine, settings) == expected
    assert counts["taken"] > 0 and counts["missed"] > 0, counts


def test_memory_running_out_at_a_draft_step_repeats_the_tokens_of_a_run_without_drafts(varied_engine, monkeypatch):
    """batch_size auto (64 slots, 16 rows): the third decode step that checks drafts runs out of memory; the rows in
    flight go back, their streams restart, and every sample is what a run without drafts draws."""
    import torch

    from harness.engines import slots

    engine = varied_engine
    settings = SamplingSettings(max_new_tokens=30, temperature=0.1, n=2, seed=5)
    monkeypatch.setattr(engine, "draft_tokens", 0)
    expected = token_ids(engine.chat(REPEATS, settings))
    real, steps = slots.SlotDecoder._forward, []

    def forward(self, ids, mask, positions, cache, keep=None):
        if keep is not None and keep > 1:
            steps.append(keep)
            if len(steps) == 3:
                raise torch.OutOfMemoryError("out of memory (simulated)")
        return real(self, ids, mask, positions, cache, keep)

    monkeypatch.setattr(slots.SlotDecoder, "_forward", forward)
    monkeypatch.setattr(engine, "auto_batch", True)
    monkeypatch.setattr(engine, "batch_size", 64)
    monkeypatch.setattr(engine, "draft_tokens", 8)
    assert token_ids(engine.chat(REPEATS, settings)) == expected
    assert len(steps) > 3 and engine.batch_size == 32
