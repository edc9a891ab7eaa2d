"""The SCoRe objective (Kumar et al. 2024, arXiv 2409.12917, Eq. 3-4), as pure tensor functions.

Notation follows the paper. An episode is (x, y1, p, y2): attempt y1 ~ πθ(·|x), instruction p,
attempt y2 ~ πθ(·|x, y1, p), binary rewards r1 = r̂(y1, y*) and r2 = r̂(y2, y*). The trainable tokens
of a sequence are picked by two masks, `mask1` (the tokens of y1) and `mask2` (the tokens of y2);
prompt and instruction tokens are in neither.

Per-token KL against the frozen base model πref, on the tokens of one attempt (k1 estimator):
    KL_t = Σ_{i ∈ attempt t} (log πθ(y_i | ·) − log πref(y_i | ·))
It enters the attempt's return as a penalty, so its gradient is taken through the score function like
the reward's; that is what makes the estimator unbiased for ∇(reward − β·KL). (Using KL_t itself as a
differentiable loss would be biased: E[∇ log πθ] = 0, so its expected gradient vanishes.)

Rewards per attempt are instantaneous (each attempt's tokens are credited with their own turn's reward,
no discounting across turns):
    Stage I  (Eq. 3):  R1 = −β2·KL_1             R2 = r2 − β1·KL_2
    Stage II (Eq. 4):  R1 = r1 − β1·KL_1         R2 = r2 + α(r2 − r1) − β1·KL_2
REINFORCE with a leave-one-out baseline over the k samples of the same prompt (RLOO):
    A_t^(j) = R_t^(j) − (1/(k−1)) Σ_{j' ≠ j} R_t^(j')
and the loss, averaged over the B episodes of a batch (sum over tokens, so long answers are not diluted):
    L = −(1/B) Σ_b [ A_1^b Σ_i mask1_i^b log πθ(y_i^b) + A_2^b Σ_i mask2_i^b log πθ(y_i^b) ]
Returns and advantages are constants (no gradient); the gradient flows only through log πθ of the
sampled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Coefficients:
    """β1 (KL everywhere), β2 (strong KL on attempt 1 in Stage I), α (reward-shaping bonus in Stage II)."""

    beta1: float = 0.01
    beta2: float = 0.1
    alpha: float = 10.0


@dataclass(frozen=True)
class Advantages:
    """Everything the loss needs besides log-probabilities, and the figures a step logs."""

    reward1: Tensor  # attempt-1 reward before KL: 0 (Stage I) or r1 (Stage II)
    reward2: Tensor  # attempt-2 reward before KL: r2 (Stage I) or r2 + α(r2 − r1) (Stage II)
    kl1: Tensor  # Σ over y1's tokens of log πθ − log πref
    kl2: Tensor
    return1: Tensor  # R1 = reward1 − (β2 in Stage I, β1 in Stage II)·KL_1
    return2: Tensor  # R2 = reward2 − β1·KL_2
    adv1: Tensor  # RLOO advantages
    adv2: Tensor


def attempt_rewards(r1: Tensor, r2: Tensor, stage: int, alpha: float) -> tuple[Tensor, Tensor]:
    """The task reward credited to each attempt's tokens in Stage I or II."""
    if stage == 1:
        return torch.zeros_like(r1), r2.clone()
    if stage == 2:
        return r1.clone(), r2 + alpha * (r2 - r1)
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def attempt_kl(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """Σ over the masked tokens of log πθ − log πref, per sequence (no gradient)."""
    return ((logp - ref_logp) * mask).sum(dim=-1).detach()


def rloo_baseline_advantages(returns: Tensor, samples: int) -> Tensor:
    """R − mean of the other k−1 returns of the same prompt; episodes of a prompt are contiguous."""
    if samples < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    if returns.numel() % samples:
        raise ValueError(f"{returns.numel()} episodes do not split into groups of {samples}")
    grouped = returns.reshape(-1, samples)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (samples - 1)
    return (grouped - others).reshape(-1)


def advantages(
    r1: Tensor, r2: Tensor, kl1: Tensor, kl2: Tensor, *, stage: int, samples: int, coef: Coefficients
) -> Advantages:
    """Rewards, returns and RLOO advantages for a batch of episodes (Stage I or II).

    `kl1`, `kl2` are the per-episode KL sums of `attempt_kl`; episodes of one prompt are contiguous.
    """
    with torch.no_grad():
        reward1, reward2 = attempt_rewards(r1.float(), r2.float(), stage, coef.alpha)
        beta_attempt1 = coef.beta2 if stage == 1 else coef.beta1
        return1 = reward1 - beta_attempt1 * kl1
        return2 = reward2 - coef.beta1 * kl2
        adv1 = rloo_baseline_advantages(return1, samples)
        adv2 = rloo_baseline_advantages(return2, samples)
    return Advantages(reward1, reward2, kl1.detach(), kl2.detach(), return1, return2, adv1, adv2)


def policy_loss(logp: Tensor, mask1: Tensor, mask2: Tensor, adv1: Tensor, adv2: Tensor, batch_episodes: int) -> Tensor:
    """−(1/B) Σ_b (A_1 Σ mask1·log πθ + A_2 Σ mask2·log πθ), over the rows given (a micro-batch of B)."""
    per_episode = adv1.detach() * (logp * mask1).sum(dim=-1) + adv2.detach() * (logp * mask2).sum(dim=-1)
    return -per_episode.sum() / batch_episodes
