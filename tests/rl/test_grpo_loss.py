"""GRPO's loss against hand-computed numbers and written-out loops (TRL's definitions, term by term)."""

from __future__ import annotations

import math

import pytest
import torch

from rl.loss import per_token_kl, policy_loss, token_logps_and_entropy

# ------------------------------------------------------------------------------------------------ policy loss
B, T = 3, 4
LOGPS = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-0.3, -1.2, -0.7, -3.0], [-0.9, -0.4, -1.1, -0.2]])
# Ratios exp(logp − old): token (0,0) exp(0.5) > 1 + eps_high with A > 0 (clipped high); token (1,0) exp(−0.5)
# < 1 − eps with A < 0 (clipped low); token (1,1) exp(0.3) > 1 + eps_high with A < 0 (not clipped: the min picks
# the unclipped, larger loss).
OLD = LOGPS - torch.tensor([[0.5, 0.0, -0.1, 0.05], [-0.5, 0.3, -0.01, 0.0], [0.0, -0.25, 0.25, 0.1]])
REF = LOGPS + torch.tensor([[0.2, -0.1, 0.0, 0.3], [0.1, 0.0, -0.2, 0.5], [-0.3, 0.2, 0.1, 0.0]])
ADV = torch.tensor([1.0, -0.5, 0.25])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
EPS_LOW, EPS_HIGH, BETA, MAX_LEN = 0.2, 0.28, 0.04, 6


def written_out_token_losses(level: str) -> list[list[float]]:
    """Per-token loss with plain Python floats: −min(r·A, clip(r)·A) + β·k3."""
    out = []
    for i in range(B):
        n = sum(MASK[i].tolist())
        seq_log_ratio = sum((LOGPS[i, t] - OLD[i, t]).item() for t in range(T) if MASK[i, t]) / max(n, 1)
        row = []
        for t in range(T):
            log_ratio = seq_log_ratio if level == "sequence" else (LOGPS[i, t] - OLD[i, t]).item()
            r = math.exp(log_ratio)
            clipped = min(max(r, 1 - EPS_LOW), 1 + EPS_HIGH)
            a = ADV[i].item()
            d = (REF[i, t] - LOGPS[i, t]).item()
            row.append(-min(r * a, clipped * a) + BETA * (math.exp(d) - d - 1))
        out.append(row)
    return out


def written_out_loss(loss_type: str, level: str = "token") -> float:
    tok = written_out_token_losses(level)
    m = MASK.tolist()
    if loss_type == "grpo":
        return sum(sum(tok[i][t] for t in range(T) if m[i][t]) / sum(m[i]) for i in range(B)) / B
    masked_sum = sum(tok[i][t] for i in range(B) for t in range(T) if m[i][t])
    if loss_type in ("bnpo", "dapo"):  # dapo on one rank with the whole rollout in one micro-batch
        return masked_sum / sum(map(sum, m))
    if loss_type == "dr_grpo":
        return masked_sum / (B * MAX_LEN)
    raise AssertionError(loss_type)


def compute(loss_type: str, level: str = "token", **overrides):
    kwargs = dict(
        loss_type=loss_type,
        epsilon_low=EPS_LOW,
        epsilon_high=EPS_HIGH,
        beta=BETA,
        ref_logps=REF,
        importance_sampling_level=level,
        max_completion_length=MAX_LEN,
        num_items_in_batch=float(MASK.sum()),
    )
    kwargs.update(overrides)
    logps = LOGPS.clone().requires_grad_(True)
    return logps, policy_loss(logps, OLD, ADV, MASK, **kwargs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_each_loss_type_matches_the_written_out_computation(loss_type, level):
    _, terms = compute(loss_type, level)
    assert terms.loss.item() == pytest.approx(written_out_loss(loss_type, level), rel=1e-5)


def test_clipping_on_both_sides_and_its_gradient():
    logps, terms = compute("dapo", beta=0.0, ref_logps=None)
    assert terms.high_clipped[0, 0] and not terms.high_clipped[0, 1]
    assert terms.low_clipped[1, 0] and not terms.low_clipped[1, 1] and not terms.high_clipped[1, 1]
    terms.loss.backward()
    # Clipped tokens carry no policy gradient; unclipped ones carry −A·r / N.
    assert logps.grad[0, 0].item() == 0.0 and logps.grad[1, 0].item() == 0.0
    n = MASK.sum().item()
    assert logps.grad[1, 1].item() == pytest.approx(0.5 * math.exp(0.3) / n, rel=1e-5)
    assert logps.grad[0, 3].item() == 0.0  # masked-out token


def test_micro_batch_scaling_matches_the_whole_batch():
    """Two micro-batches accumulate to the whole batch's loss for grpo/dr_grpo/dapo (equal-sized halves)."""
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        whole = policy_loss(
            LOGPS[:2],
            OLD[:2],
            ADV[:2],
            MASK[:2],
            loss_type=loss_type,
            max_completion_length=MAX_LEN,
            num_items_in_batch=float(MASK[:2].sum()),
        )
        parts = sum(
            policy_loss(
                LOGPS[i : i + 1],
                OLD[i : i + 1],
                ADV[i : i + 1],
                MASK[i : i + 1],
                loss_type=loss_type,
                max_completion_length=MAX_LEN,
                num_micro_batches=2,
                num_items_in_batch=float(MASK[:2].sum()),
            ).loss
            for i in range(2)
        )
        assert parts.item() == pytest.approx(whole.loss.item(), rel=1e-6), loss_type


def test_on_policy_ratio_is_one_but_keeps_the_gradient():
    logps = LOGPS.clone().requires_grad_(True)
    terms = policy_loss(logps, None, ADV, MASK, loss_type="bnpo")
    terms.loss.backward()
    expected = -(ADV.unsqueeze(1) * MASK).sum() / MASK.sum()
    assert terms.loss.item() == pytest.approx(expected.item())
    torch.testing.assert_close(logps.grad, -(ADV.unsqueeze(1) * MASK) / MASK.sum())
    assert not terms.low_clipped.any() and not terms.high_clipped.any()


def test_kl_is_exactly_zero_against_itself_and_positive_otherwise():
    assert torch.equal(per_token_kl(LOGPS, LOGPS.clone()), torch.zeros_like(LOGPS))
    assert (per_token_kl(LOGPS, REF)[REF != LOGPS] > 0).all()


def test_token_logps_and_entropy_follow_the_temperature():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    logps, entropy = token_logps_and_entropy(logits, tokens, temperature=0.7)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logps, expected)
    torch.testing.assert_close(entropy, torch.distributions.Categorical(logits=logits / 0.7).entropy())


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(LOGPS, OLD, ADV, MASK, loss_type="ppo")
