"""log π(y_i | y_<i) of the sampled attempt tokens, through the output layer in chunks of positions.

The loss and the KL need one number per attempt token, yet the usual route (the model's logits, a
float32 log-softmax over them) keeps a float32 [T, V] tensor per row for the backward pass: about
11 GB for a micro-batch of 8 rows of 2,300 tokens with Qwen2.5's 151,936-token vocabulary. Here the
model returns only its last hidden states (`logits_to_keep=1`: one position's logits, used as a
check), and `_SampledLogProbs` multiplies chunks of positions by the output embedding itself: the
forward keeps the hidden states and one log-normaliser per token; the backward recomputes each
chunk's softmax. At most one [chunk, V] block exists at a time, and nothing of size V is saved.

Only the positions that predict attempt tokens are scored (prompt and instruction tokens get 0),
and the logits are divided by the sampling temperature: the rollouts sample from softmax(z / T), so
that is the distribution whose log-probabilities the policy gradient and the KL need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from harness.errors import HarnessError

CHUNK = 1024  # positions per [chunk, V] block


class _SampledLogProbs(torch.autograd.Function):
    """log softmax(hidden · Wᵀ / T)[target] per row of `hidden` [N, H], in chunks of rows.

    ∂/∂z log softmax(z/T)[y] = (onehot(y) − softmax(z/T)) / T, recomputed chunk by chunk in the
    backward from the saved hidden states and log-normalisers. Matrix products run in `dtype` (the
    autocast dtype the policy computes in, or the weights' own), as the model's own output layer would.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, dtype: torch.dtype):
        w = weight.to(dtype)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, hidden.shape[0], CHUNK):
            z = (hidden[s : s + CHUNK].to(dtype) @ w.T).float() / temperature
            lse[s : s + CHUNK] = torch.logsumexp(z, dim=-1)
            out[s : s + CHUNK] = z.gather(-1, targets[s : s + CHUNK, None]).squeeze(-1) - lse[s : s + CHUNK]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.dtype = temperature, dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(ctx.dtype)
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        for s in range(0, hidden.shape[0], CHUNK):
            h, g = hidden[s : s + CHUNK].to(ctx.dtype), grad[s : s + CHUNK].float()
            z = (h @ w.T).float() / ctx.temperature
            dz = -torch.exp(z - lse[s : s + CHUNK, None]) * g[:, None]
            dz.scatter_add_(-1, targets[s : s + CHUNK, None], g[:, None])
            dz = (dz / ctx.temperature).to(ctx.dtype)
            if want_hidden:
                grad_hidden[s : s + CHUNK] = (dz @ w).to(hidden.dtype)
            if want_weight:
                grad_weight += (dz.T @ h).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def sampled_logprobs(
    hidden: Tensor, weight: Tensor, input_ids: Tensor, positions: Tensor, temperature: float = 1.0
) -> Tensor:
    """[B, T−1]: log softmax(hidden[:, i] · Wᵀ / T)[input_ids[:, i+1]] where `positions[:, i]` is set, else 0.

    `hidden` [B, T, H] are the model's last hidden states (after its final norm), `weight` [V, H] its
    output embedding, `positions` [B, T−1] marks the predicted tokens to score (the attempt tokens).
    """
    dtype = _compute_dtype(hidden.device.type, weight.dtype)
    picked = positions.bool()
    out = torch.zeros(picked.shape, dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        values = _SampledLogProbs.apply(hidden[:, :-1][picked], weight, input_ids[:, 1:][picked], temperature, dtype)
    return out.masked_scatter(picked, values)


def model_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    positions: Tensor,
    temperature: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Tensor:
    """`sampled_logprobs` of a causal LM's sequences, under the policy's autocast."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None or not isinstance(getattr(head, "weight", None), Tensor):
        raise HarnessError("training needs a model whose output layer is a plain linear map without bias")
    with autocast():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        hidden = out.hidden_states[-1]
        with torch.no_grad():  # the chunked product must give the model's own logits (no soft-capping, scaling)
            last = (hidden[:, -1] @ head.weight.to(hidden.dtype).T).float()
        if not torch.allclose(last, out.logits[:, -1].float(), rtol=2e-2, atol=2e-2):
            raise HarnessError(
                "this model's logits are not its last hidden state times its output embedding (logit scaling "
                "or soft-capping?); the trainer's chunked log-probabilities do not support it"
            )
        return sampled_logprobs(hidden, head.weight, input_ids, positions, temperature)


def _compute_dtype(device_type: str, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype the output layer computes in: the autocast dtype when autocast is on, else the weights'."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight_dtype
