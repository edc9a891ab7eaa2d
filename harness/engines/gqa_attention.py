"""Grouped-query attention over several new tokens a row without copying the cache, on CPU.

In a model whose query heads share key/value heads (the embedded SmolLM2: 9 query heads, 3 key/value
heads), transformers' sdpa attention copies every cached key and value once per query head sharing
it (`repeat_kv`) whenever a row brings more than one new token: at every prefill and at every decode
step that checks drafts (slots.py). On CUDA that keeps sdpa on its fast kernels; on CPU it is pure
cost: 16 rows of 400 cached tokens, 2 new tokens a row, took 2.4 ms a layer with the copy and 0.67
ms through torch's own grouped-query support (`enable_gqa=True`), which gives the same numbers bit
for bit on the shapes measured (tests/test_engine_drafts.py checks the logits). Whole forwards of the
embedded model at 400 cached tokens (2-core CPU, fastest of 7): 16 rows x 2 tokens 128 ms with the
copy, 82 ms without; 8 x 2, 68 and 59 ms; 16 rows x 1 token 54 ms either way (one new token a row
already avoids the copy in transformers, `pack_gqa`).

transformers sends CPU masked attention through the copy (`use_gqa_in_sdpa`); `apply` switches a
model to this attention for the length of a generation, as packed_linear.py does its weights.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

NAME = "score_eval_sdpa_gqa"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention, but with several query tokens against grouped key/value heads and
    a mask (no dropout, position bias or softcap), where torch maps the groups itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain = dropout == 0.0 and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if not (grouped and plain and query.shape[2] > 1 and attention_mask is not None):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def apply(model) -> Iterator[None]:
    """Within the block, a CPU model on transformers' sdpa attention uses `_attention` instead."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or model.device.type != "cpu":
        yield
        return
    _register()
    # A config's setter writes its value into every sub-config too, so each (a vision tower's on
    # eager, say) is set again after its parent, in that order, both ways.
    configs = [(c, c._attn_implementation) for c in _with_sub_configs(config)]
    for c, own in configs:
        c._attn_implementation = NAME if own == "sdpa" else own
    try:
        yield
    finally:
        for c, own in configs:
            c._attn_implementation = own


def _with_sub_configs(config) -> list:
    """`config` and its sub-configs (a multimodal model's text and vision configs), parents first."""
    subs = (getattr(config, key, None) for key in getattr(config, "sub_configs", {}))
    return [config] + [c for sub in subs if sub is not None for c in _with_sub_configs(sub)]
