"""The SCoRe objective on a hand-made batch: every expected number is worked out by hand below.

One prompt, k = 3 samples (episodes a, b, c), 6 predicted-token positions each. Labels per position
(P = prompt/instruction, 1 = attempt-1 token, 2 = attempt-2 token, - = padding):
    a: P P 1 1 P 2
    b: P 1 P 2 2 -
    c: P 1 1 P 2 -
Prompt positions carry log-probs far from the reference (−3 vs −9) so a mask that let them in would
change every number. Per-attempt sums, from the tensors in `batch()`:
    KL1 = Σ_attempt1 (logp − ref): a (−1.0+1.2)+(−0.5+0.5) = 0.2   b (−2.0+1.0) = −1.0   c (−0.1+0.6)+(−0.2+0.2) = 0.5
    KL2 = Σ_attempt2 (logp − ref): a (−0.3+0.1) = −0.2           b (−0.4+0.4)+(−0.6+0.1) = −0.5   c (−1.0+1.5) = 0.5
    S1  = Σ_attempt1 logp: a −1.5, b −2.0, c −0.3        S2 = Σ_attempt2 logp: a −0.3, b −1.0, c −1.0
Rewards: r1 = (0, 1, 1), r2 = (1, 1, 0): a is wrong→right, b right→right, c right→wrong.
Coefficients: the paper's β1 = 0.01, β2 = 0.1, α = 10.
RLOO with k = 3: A_j = R_j − (ΣR − R_j)/2.
"""

from __future__ import annotations

import pytest
import torch

from harness.train.logprobs import sampled_logprobs
from harness.train.objective import (
    Coefficients,
    advantages,
    attempt_kl,
    attempt_rewards,
    policy_loss,
    rloo_baseline_advantages,
)

P, X = -3.0, -9.0  # a prompt position's logp and ref logp
COEF = Coefficients(beta1=0.01, beta2=0.1, alpha=10.0)


def batch():
    logp = torch.tensor(
        [
            [P, P, -1.0, -0.5, P, -0.3],
            [P, -2.0, P, -0.4, -0.6, 0.0],
            [P, -0.1, -0.2, P, -1.0, 0.0],
        ],
        requires_grad=True,
    )
    ref = torch.tensor(
        [
            [X, X, -1.2, -0.5, X, -0.1],
            [X, -1.0, X, -0.4, -0.1, 0.0],
            [X, -0.6, -0.2, X, -1.5, 0.0],
        ]
    )
    mask1 = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.float)
    mask2 = torch.tensor([[0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0]], dtype=torch.float)
    r1, r2 = torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    return logp, ref, mask1, mask2, r1, r2


def run(stage: int):
    logp, ref, mask1, mask2, r1, r2 = batch()
    kl1, kl2 = attempt_kl(logp, ref, mask1), attempt_kl(logp, ref, mask2)
    adv = advantages(r1, r2, kl1, kl2, stage=stage, samples=3, coef=COEF)
    loss = policy_loss(logp, mask1, mask2, adv.adv1, adv.adv2, batch_episodes=3)
    return logp, mask1, mask2, adv, loss


def close(tensor, expected):
    assert tensor.tolist() == pytest.approx(expected, abs=1e-6)


def test_kl_sums_only_the_tokens_of_each_attempt():
    _, _, _, adv, _ = run(stage=1)
    close(adv.kl1, [0.2, -1.0, 0.5])
    close(adv.kl2, [-0.2, -0.5, 0.5])


def test_stage1_rewards_only_attempt2_and_puts_beta2_on_attempt1():
    _, _, _, adv, loss = run(stage=1)
    close(adv.reward1, [0, 0, 0])
    close(adv.reward2, [1, 1, 0])
    # R1 = −β2·KL1 = −0.1·(0.2, −1.0, 0.5);  R2 = r2 − β1·KL2 = (1, 1, 0) − 0.01·(−0.2, −0.5, 0.5)
    close(adv.return1, [-0.02, 0.1, -0.05])
    close(adv.return2, [1.002, 1.005, -0.005])
    # ΣR1 = 0.03: A1 = −0.02 − 0.05/2, 0.1 − (−0.07)/2, −0.05 − 0.08/2
    close(adv.adv1, [-0.045, 0.135, -0.09])
    # ΣR2 = 2.002: A2 = 1.002 − 1.0/2, 1.005 − 0.997/2, −0.005 − 2.007/2
    close(adv.adv2, [0.502, 0.5065, -1.0085])
    # L = −(1/3)[(−0.045·−1.5 + 0.502·−0.3) + (0.135·−2.0 + 0.5065·−1.0) + (−0.09·−0.3 + −1.0085·−1.0)]
    #   = −(1/3)[−0.0831 − 0.7765 + 1.0355] = −0.1759/3
    assert float(loss.detach()) == pytest.approx(-0.1759 / 3, abs=1e-6)


def test_stage2_rewards_both_attempts_with_the_alpha_bonus_on_attempt2():
    _, _, _, adv, loss = run(stage=2)
    close(adv.reward1, [0, 1, 1])
    # r2 + α(r2 − r1) = 1 + 10·1, 1 + 10·0, 0 + 10·(−1)
    close(adv.reward2, [11, 1, -10])
    # R1 = r1 − β1·KL1 (β1, not β2, on attempt 1 in Stage II)
    close(adv.return1, [-0.002, 1.01, 0.995])
    close(adv.return2, [11.002, 1.005, -10.005])
    # ΣR1 = 2.003: A1 = −0.002 − 2.005/2, 1.01 − 0.993/2, 0.995 − 1.008/2
    close(adv.adv1, [-1.0045, 0.5135, 0.491])
    # ΣR2 = 2.002: A2 = 11.002 − (−9.0)/2, 1.005 − 0.997/2, −10.005 − 12.007/2
    close(adv.adv2, [15.502, 0.5065, -16.0085])
    # a: −1.0045·−1.5 + 15.502·−0.3 = −3.14385;  b: 0.5135·−2.0 + 0.5065·−1.0 = −1.5335;
    # c: 0.491·−0.3 + −16.0085·−1.0 = 15.8612;   L = −(−3.14385 − 1.5335 + 15.8612)/3
    assert float(loss.detach()) == pytest.approx(-11.18385 / 3, abs=1e-6)


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_reaches_only_attempt_tokens_weighted_by_their_advantage(stage):
    logp, mask1, mask2, adv, loss = run(stage)
    loss.backward()
    # ∂L/∂logp[b, i] = −(A1_b·mask1[b, i] + A2_b·mask2[b, i]) / 3: zero on prompt and padding positions.
    expected = -(adv.adv1[:, None] * mask1 + adv.adv2[:, None] * mask2) / 3
    assert torch.allclose(logp.grad, expected, atol=1e-7)
    prompt_positions = (mask1 + mask2) == 0
    assert torch.all(logp.grad[prompt_positions] == 0)


def test_rewards_per_stage():
    r1, r2 = torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 0.0, 1.0])
    w1, w2 = attempt_rewards(r1, r2, stage=1, alpha=10.0)
    assert w1.tolist() == [0, 0, 0, 0] and w2.tolist() == [0, 1, 0, 1]
    w1, w2 = attempt_rewards(r1, r2, stage=2, alpha=10.0)
    # i→i: 0 + 0; i→c: 1 + 10; c→i: 0 − 10; c→c: 1 + 0
    assert w1.tolist() == [0, 0, 1, 1] and w2.tolist() == [0, 11, -10, 1]


def test_rloo_baseline_is_the_mean_of_the_other_samples_of_the_same_prompt():
    # Two prompts, k = 2: A = R − R_other.  Prompt 1: (1, 0) → (1, −1); prompt 2: (3, 3) → (0, 0).
    assert rloo_baseline_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), 2).tolist() == [1, -1, 0, 0]
    with pytest.raises(ValueError):
        rloo_baseline_advantages(torch.tensor([1.0, 0.0, 3.0]), 2)


def test_gradient_through_logits_touches_only_positions_that_predict_attempt_tokens():
    # 1 sequence of 5 tokens; predicted tokens are ids[1:] = (2, 0, 1, 2) at positions 0..3 of the
    # logits. Attempt 1 = the token predicted at position 1, attempt 2 = the one at position 3.
    # The output embedding is the identity, so the hidden states are the logits.
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 3, requires_grad=True)
    ids = torch.tensor([[1, 2, 0, 1, 2]])
    mask1 = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    mask2 = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    logp = sampled_logprobs(logits, torch.eye(3), ids, mask1 + mask2)
    policy_loss(logp, mask1, mask2, torch.tensor([2.0]), torch.tensor([-1.0]), batch_episodes=1).backward()
    grad = logits.grad[0]
    assert torch.all(grad[[0, 2, 4]] == 0)
    probs = torch.softmax(logits.detach()[0], dim=-1)
    # ∂(−A·log softmax(z)[y])/∂z = −A·(onehot(y) − softmax(z))
    assert torch.allclose(grad[1], -2.0 * (torch.nn.functional.one_hot(torch.tensor(0), 3) - probs[1]), atol=1e-6)
    assert torch.allclose(grad[3], 1.0 * (torch.nn.functional.one_hot(torch.tensor(2), 3) - probs[3]), atol=1e-6)
