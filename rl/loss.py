"""GRPO math on plain tensors: group advantages, per-token log-probs, the clipped surrogate and its aggregations.

Everything here follows TRL's ``GRPOTrainer`` (v1.16) term by term, so a run configured with the same
``loss_type``/``scale_rewards``/``epsilon``/``beta`` optimises the same objective; ``tests/test_grpo_loss.py``
checks each piece against a written-out computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]
Aggregation = Literal["sum_then_normalize", "normalize_then_sum"]
ImportanceSamplingLevel = Literal["token", "sequence"]

# Added to the std before dividing, as TRL does, so a near-constant group gives large but finite advantages.
STD_EPS = 1e-4


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased (Bessel-corrected) std ignoring NaNs; NaN where fewer than two values are present."""
    dims = dim if dim is not None else tuple(range(x.dim()))
    mean = torch.nanmean(x, dim=dims, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dims, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dims, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(variance, float("nan")))
    std = torch.sqrt(variance * correction)
    if dim is None:
        return std.reshape(())
    return std if keepdim else std.squeeze(dim)


def weighted_reward(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the reward functions per completion (None/NaN ones skipped); NaN where none applied."""
    total = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return total


@dataclass
class Advantages:
    """Per-completion advantages with the statistics that are logged next to them."""

    advantages: torch.Tensor  # (N,), 0 for unscorable completions
    rewards: torch.Tensor  # (N,), weighted sum of the raw rewards, NaN where no function applied (what is logged)
    std: torch.Tensor  # (N,), the std each advantage was (or, with scale_rewards="none", would be) divided by
    is_std_zero: torch.Tensor  # (N,) bool, that std is zero (TRL's frac_reward_zero_std)
    group_without_spread: torch.Tensor  # (N,) bool, the completion's group has one reward value (DAPO's filter)
    rewards_per_func: torch.Tensor  # (N, K), the raw rewards these were computed from, NaN where not applicable


def spread_stats(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred values, std and a no-spread flag along ``dim``, NaNs left out; exact where the values are all equal.

    Returns ``(x - mean, std, no_spread)`` with ``std`` and ``no_spread`` kept as size-1 ``dim``. ``no_spread`` is
    decided by value: every non-NaN entry equal (or fewer than two of them). There the centred values are exactly 0
    and the std exactly 0: in fp32 the mean of G equal non-dyadic values (1 - 1/3 · 0.5, …) is not always that value,
    which left a std of ~1e-7 and gave every completion of a constant group the same small, non-zero advantage.
    """
    present = ~torch.isnan(x)
    highest = torch.where(present, x, torch.full_like(x, -torch.inf)).amax(dim=dim, keepdim=True)
    lowest = torch.where(present, x, torch.full_like(x, torch.inf)).amin(dim=dim, keepdim=True)
    no_spread = (highest <= lowest) | (present.sum(dim=dim, keepdim=True) < 2)
    centred = torch.where(no_spread, torch.zeros_like(x), x - torch.nanmean(x, dim=dim, keepdim=True))
    std = torch.where(no_spread, torch.zeros_like(highest), nanstd(x, dim=dim, keepdim=True))
    return torch.where(present, centred, x), std, no_spread


def group_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: ScaleRewards = "group",
    aggregation: Aggregation = "sum_then_normalize",
) -> Advantages:
    """Advantages of ``num_generations`` consecutive completions per prompt.

    ``rewards_per_func`` is (N, K) with NaN where a reward function returned None. NaNs are left out of every
    mean and std (a function that does not apply does not move the baseline); a completion no function scored
    gets advantage 0. For ``scale_rewards="batch"`` pass the whole global batch (all ranks), then slice.
    A group whose rewards are all equal (``spread_stats``, by value) has std exactly 0, advantages exactly 0,
    ``is_std_zero`` and ``group_without_spread`` set, whatever the weights and reward values.
    """
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', not {scale_rewards!r}")
    g = num_generations
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    raw = weighted_reward(rewards_per_func, weights)
    centred, group_std, group_without_spread = spread_stats(raw.view(-1, g), 1)
    centred = centred.reshape(-1)
    group_std, group_without_spread = (t.expand(-1, g).reshape(-1) for t in (group_std, group_without_spread))
    if aggregation == "sum_then_normalize":
        rewards = raw
        if scale_rewards == "batch":
            std = spread_stats(rewards, 0)[1].expand_as(rewards)
        else:
            std = group_std
        advantages = centred if scale_rewards == "none" else centred / (std + STD_EPS)
    elif aggregation == "normalize_then_sum":
        grouped = rewards_per_func.view(-1, g, rewards_per_func.size(1))
        centred_k, std_k, no_spread_k = spread_stats(grouped, 1)
        per_func = (centred_k / (std_k + STD_EPS)).view(-1, rewards_per_func.size(1))
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        batch_centred, std, _ = spread_stats(rewards, 0)
        std = std.expand_as(rewards)
        advantages = batch_centred / (std + STD_EPS)
        # A group where no function has any spread has normalised rewards exactly 0 and, every group being centred,
        # a batch mean that is 0 up to rounding: its advantage is 0, not minus that rounding.
        silent = no_spread_k.all(dim=2).expand(-1, g).reshape(-1)
        advantages = torch.where(silent, torch.zeros_like(advantages), advantages)
    else:
        raise ValueError(f"aggregation must be 'sum_then_normalize' or 'normalize_then_sum', not {aggregation!r}")
    is_std_zero = torch.isclose(std, torch.zeros_like(std))
    return Advantages(
        torch.nan_to_num(advantages, nan=0.0), raw, std, is_std_zero, group_without_spread, rewards_per_func
    )


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
