"""Chunked log-probabilities of the sampled tokens: the same values and gradients as a plain
log-softmax over the logits, without keeping anything of the vocabulary's size for the backward pass."""

from __future__ import annotations

import pytest
import torch

from harness.train import logprobs as L


def plain(hidden, weight, ids, positions, temperature):
    """The textbook computation the chunked one must match: log_softmax(h·Wᵀ / T)[next token]."""
    logp = torch.log_softmax((hidden[:, :-1] @ weight.T) / temperature, dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * positions


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_values_and_gradients_equal_a_plain_log_softmax(monkeypatch, temperature):
    monkeypatch.setattr(L, "CHUNK", 3)  # 2 x 6 positions picked in 4 chunks, the last one partial
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (2, 7))
    positions = torch.tensor([[0, 1, 1, 1, 0, 1], [1, 1, 0, 1, 1, 1]], dtype=torch.float64)
    upstream = torch.randn(2, 6, dtype=torch.float64)

    ours = L.sampled_logprobs(hidden, weight, ids, positions, temperature)
    (ours * upstream).sum().backward()
    got = ours.detach(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    expected = plain(hidden, weight, ids, positions, temperature)
    (expected * upstream).sum().backward()

    assert torch.all(ours.detach()[positions == 0] == 0)  # unpicked positions are 0 and get no gradient
    torch.testing.assert_close(got[0], expected.detach().float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], weight.grad, rtol=1e-5, atol=1e-6)


def saved_bytes(fn) -> list[torch.Tensor]:
    """The tensors autograd keeps for the backward pass while `fn` runs (what a backward will need)."""
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


def test_scoring_a_sequence_keeps_nothing_of_vocabulary_size_for_the_backward(tiny_model_dir):
    """The tiny model has the embedded tokenizer's 49,152-token vocabulary and 32-wide hidden states, so
    a [T, V] tensor is 1,500 times a [T, H] one. Before chunking, the trainer kept one float32
    log-softmax [T−1, V] per row: the measure below sees that in the plain computation (so it could
    fail) and nothing of the kind in the trainer's."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    vocab = model.get_output_embeddings().weight.shape[0]
    params = {p.data_ptr() for p in model.parameters()}
    rows, length = 2, 48
    ids = torch.randint(0, vocab, (rows, length))
    mask = torch.ones_like(ids)
    positions = torch.ones(rows, length - 1)
    one_row_fp32 = (length - 1) * vocab * 4

    def ours():
        L.model_logprobs(model, ids, mask, positions, 1.0, torch.enable_grad).sum()

    def before():
        logits = model(input_ids=ids, attention_mask=mask).logits
        for r in range(rows):  # the trainer's old token_logprobs, one row at a time
            torch.log_softmax(logits[r, :-1].float(), dim=-1).gather(-1, ids[r, 1:, None])

    def activations(tensors):  # parameters are held anyway; count what the backward adds
        return [t for t in tensors if t.data_ptr() not in params]

    old = activations(saved_bytes(before))
    new = activations(saved_bytes(ours))
    assert sum(t.numel() * t.element_size() for t in old) >= rows * one_row_fp32
    assert not [tuple(t.shape) for t in new if t.shape and t.shape[-1] == vocab]
    # Everything the backward keeps, the whole model's activations included (0.65 MB measured), is under
    # a tenth of one row's float32 log-softmax (9.2 MB).
    assert sum(t.numel() * t.element_size() for t in new) < one_row_fp32 / 10


def test_a_model_whose_logits_are_not_hidden_times_embedding_is_refused(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from harness.errors import HarnessError

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    head = model.get_output_embeddings()
    head.register_forward_hook(lambda module, args, out: out * 4.0)  # Granite/Cohere-style logit scaling
    ids = torch.randint(0, 100, (1, 6))
    with pytest.raises(HarnessError, match="logit scaling"):
        L.model_logprobs(model, ids, torch.ones_like(ids), torch.ones(1, 5), 1.0, torch.enable_grad)
