"""The SCoRe estimator is unbiased: on a small categorical policy, the average of many sampled
gradients equals the exact gradient of the objective, computed by enumerating every episode.

The policy: K = 3 answers; attempt 1 ~ softmax(θ[0]), attempt 2 ~ softmax(θ[1 + y1]) (it sees its
first attempt). The reference πref is another fixed table. Answer 2 is correct. With per-attempt
(instantaneous) returns, the exact objective whose gradient the estimator targets is
    J(θ) = Σ_y1 π(y1)·[w1(y1) − c1·log(π(y1)/πref(y1))]
         + Σ_y1 sg[π(y1)] Σ_y2 π(y2|y1)·[w2(y1, y2) − β1·log(π(y2|y1)/πref(y2|y1))]
with w1 = 0, c1 = β2, w2 = r2 in Stage I, and w1 = r1, c1 = β1, w2 = r2 + α(r2 − r1) in Stage II;
sg[·] stops the gradient (attempt-1 tokens are credited with attempt 1's return only).
The β's are larger than the paper's so the KL terms move the gradient by more than the tolerance.

Tolerance: the 200,000 sampled episodes are split into 20 chunks; each of the 12 gradient entries must
lie within 4 standard errors (over the chunks) of the exact value. The same bound must reject the
exact gradient of a wrong objective, so the test could fail.
"""

from __future__ import annotations

import pytest
import torch

from harness.train.objective import Coefficients, advantages, attempt_kl, policy_loss

K, CORRECT, SAMPLES = 3, 2, 4
EPISODES, CHUNKS = 200_000, 20
COEF = Coefficients(beta1=0.2, beta2=1.0, alpha=10.0)


def tables():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(1 + K, K, generator=gen)
    ref = torch.randn(1 + K, K, generator=gen)
    return theta, ref


def exact_gradient(theta: torch.Tensor, ref: torch.Tensor, stage: int, coef: Coefficients) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    logp1, logp2 = torch.log_softmax(theta[0], -1), torch.log_softmax(theta[1:], -1)
    ref1, ref2 = torch.log_softmax(ref[0], -1), torch.log_softmax(ref[1:], -1)
    r = (torch.arange(K) == CORRECT).float()
    r1, r2 = r[:, None].expand(K, K), r[None, :].expand(K, K)  # [y1, y2]
    if stage == 1:
        w1, c1, w2 = torch.zeros(K), coef.beta2, r2
    else:
        w1, c1, w2 = r, coef.beta1, r2 + coef.alpha * (r2 - r1)
    p1 = logp1.exp()
    turn1 = (p1 * (w1 - c1 * (logp1 - ref1))).sum()
    turn2 = (p1.detach()[:, None] * logp2.exp() * (w2 - coef.beta1 * (logp2 - ref2))).sum()
    (grad,) = torch.autograd.grad(turn1 + turn2, theta)
    return grad


def sampled_gradients(theta: torch.Tensor, ref: torch.Tensor, stage: int) -> torch.Tensor:
    """One gradient estimate per chunk, each from EPISODES / CHUNKS episodes through the trainer's code."""
    gen = torch.Generator().manual_seed(1)
    estimates = []
    per_chunk = EPISODES // CHUNKS
    for _ in range(CHUNKS):
        theta_ = theta.clone().requires_grad_(True)
        logp1, logp2 = torch.log_softmax(theta_[0], -1), torch.log_softmax(theta_[1:], -1)
        ref1, ref2 = torch.log_softmax(ref[0], -1), torch.log_softmax(ref[1:], -1)
        y1 = torch.multinomial(logp1.detach().exp(), per_chunk, replacement=True, generator=gen)
        y2 = torch.multinomial(logp2.detach().exp()[y1], 1, generator=gen).squeeze(1)
        # Two-token "sequences": position 0 is attempt 1's token, position 1 attempt 2's.
        logp = torch.stack([logp1[y1], logp2[y1, y2]], dim=1)
        ref_logp = torch.stack([ref1[y1], ref2[y1, y2]], dim=1)
        mask1 = torch.tensor([1.0, 0.0]).expand(per_chunk, 2)
        mask2 = torch.tensor([0.0, 1.0]).expand(per_chunk, 2)
        r1, r2 = (y1 == CORRECT).float(), (y2 == CORRECT).float()
        kl1, kl2 = attempt_kl(logp, ref_logp, mask1), attempt_kl(logp, ref_logp, mask2)
        adv = advantages(r1, r2, kl1, kl2, stage=stage, samples=SAMPLES, coef=COEF)
        loss = policy_loss(logp, mask1, mask2, adv.adv1, adv.adv2, batch_episodes=per_chunk)
        (grad,) = torch.autograd.grad(loss, theta_)
        estimates.append(-grad)  # the loss is minimised: −∇L estimates ∇J
    return torch.stack(estimates)


@pytest.mark.parametrize(
    "stage,wrong",
    [
        (1, Coefficients(beta1=0.2, beta2=0.0, alpha=10.0)),  # Stage I without its strong attempt-1 KL
        (2, Coefficients(beta1=0.2, beta2=1.0, alpha=0.0)),  # Stage II without the α bonus
    ],
)
def test_average_sampled_gradient_matches_the_exact_gradient(stage, wrong):
    theta, ref = tables()
    estimates = sampled_gradients(theta, ref, stage)
    mean = estimates.mean(0)
    stderr = estimates.std(0) / CHUNKS**0.5
    exact = exact_gradient(theta, ref, stage, COEF)
    assert torch.all((mean - exact).abs() <= 4 * stderr), (mean, exact, stderr)
    assert exact.abs().max() > 0.05  # the gradient being matched is not trivially zero
    wrong_exact = exact_gradient(theta, ref, stage, wrong)
    assert torch.any((mean - wrong_exact).abs() > 4 * stderr)
