"""Attacks on draft tokens (slots.py _step/_drafts/_verify) and gqa_attention.apply: models and
schedules the tests in test_engine_drafts.py do not meet."""

from __future__ import annotations

from harness.engines.base import SamplingSettings


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


def test_generation_attention_gives_back_each_sub_configs_own_attention(tiny_model_dir):
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


def test_drafts_give_the_tokens_of_one_token_steps_on_a_sliding_window_model(tiny_model_dir):
    """Sliding-window attention (Mistral, window 12) counts its window in cache columns; a rejected
    draft's masked columns inside a row's span would push its older tokens out of the window (the
    greedy tokens of every prompt here changed), so such a model decodes one token a row."""
    from transformers import MistralConfig, MistralForCausalLM

    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    sizes |= {"num_key_value_heads": 1, "sliding_window": 12, "initializer_range": 0.2, "tie_word_embeddings": True}
    engine = tiny_engine(MistralForCausalLM, MistralConfig, tiny_model_dir, **sizes)
    engine.batch_size = 16
    echo = [[{"role": "user", "content": "Say it again: " + "one two three " * k}] for k in (1, 4, 2, 7, 3)]
    settings = SamplingSettings(max_new_tokens=40)
    engine.draft_tokens = 0
    expected = token_ids(engine.chat(echo, settings))
    engine.draft_tokens = 8
    assert token_ids(engine.chat(echo, settings)) == expected
