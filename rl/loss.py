"""GRPO's loss on plain tensors: per-token log-probs, the clipped surrogate, the KL and their aggregations.

Everything here follows TRL's ``GRPOTrainer`` (v1.16) term by term, so a run configured with the same
``loss_type``/``epsilon``/``beta`` optimises the same objective; ``tests/rl/test_grpo_loss.py`` checks each piece
against a written-out computation. The advantages it takes come from ``rl/advantages.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.config import ImportanceSamplingLevel, LossType


def token_logps_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each token under ``softmax(logits / temperature)`` and (without grad) the entropy.

    Sampling used the same temperature, so these are the log-probs of the distribution the tokens came from.
    """
    logits = logits.float() / temperature
    logsumexp = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logsumexp
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = logsumexp - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logps, entropy


@dataclass
class LossTerms:
    """The loss to backpropagate and the detached per-token pieces the metrics are made of."""

    loss: torch.Tensor
    per_token_kl: torch.Tensor | None
    low_clipped: torch.Tensor  # (B, T) or (B, 1) bool
    high_clipped: torch.Tensor


def per_token_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(policy ‖ reference) per token: exp(r − p) − (r − p) − 1, ≥ 0 and 0 where equal."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: LossType = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    importance_sampling_level: ImportanceSamplingLevel = "token",
    max_completion_length: int | None = None,
    num_micro_batches: int = 1,
    num_items_in_batch: float | None = None,
    world_size: int = 1,
) -> LossTerms:
    """The clipped GRPO surrogate (+ ``beta`` · KL) of one micro-batch, aggregated as TRL's ``loss_type``.

    Shapes: ``logps``/``old_logps``/``ref_logps``/``mask`` are (B, T) over completion tokens, ``advantages`` (B,).
    ``old_logps=None`` means the rollout policy is the current one (μ = 1): the ratio is 1 but keeps its gradient.
    The returned loss is already divided for accumulation over ``num_micro_batches`` micro-batches:
    - grpo: mean over sequences of each sequence's token mean;
    - bnpo: token mean over the micro-batch;
    - dr_grpo: token sum / (B · max_completion_length);
    - dapo: token sum / (completion tokens of the whole rollout batch on all ranks / world size), which after
      summing micro-batches and averaging ranks is the global token mean.
    """
    mask = mask.to(logps.dtype)
    old_logps = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old_logps
    if importance_sampling_level == "token":
        log_weights = log_ratio
    elif importance_sampling_level == "sequence":  # GSPO: one ratio per sequence, the geometric mean of its tokens'
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', not {importance_sampling_level!r}")
    coef_1 = torch.exp(log_weights)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl = per_token_kl(logps, ref_logps)
        per_token = per_token + beta * kl

    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / num_micro_batches
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0) / num_micro_batches
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length) / num_micro_batches
    elif loss_type == "dapo":
        if num_items_in_batch is None:
            raise ValueError("loss_type='dapo' needs num_items_in_batch")
        loss = (per_token * mask).sum() / (max(num_items_in_batch, 1.0) / world_size)
    else:
        raise ValueError(f"loss_type must be one of grpo, bnpo, dr_grpo, dapo, not {loss_type!r}")

    with torch.no_grad():
        low = (coef_1 < 1 - epsilon_low) & (adv < 0)
        high = (coef_1 > 1 + epsilon_high) & (adv > 0)
    return LossTerms(loss=loss, per_token_kl=None if kl is None else kl.detach(), low_clipped=low, high_clipped=high)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (broadcast to ``mask``'s shape) over the masked-in positions; 0 when none are."""
    mask = mask.to(torch.float32)
    values = values.to(torch.float32).expand_as(mask)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
