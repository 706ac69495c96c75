"""Group-relative advantages from the reward functions' scores, with the statistics logged next to them.

TRL's ``GRPOTrainer`` (v1.16) term by term: the weighted sum or per-function normalisation
(``multi_objective_aggregation``), the group or batch std (``scale_rewards``), NaN (a reward that does not apply)
left out of every mean and std. ``tests/rl/test_advantages.py`` checks each against hand-computed numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.config import Aggregation, ScaleRewards
from rl.distributed import gather_padded

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


def global_group_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    num_generations: int,
    scale_rewards: ScaleRewards,
    aggregation: Aggregation,
    world_size: int,
) -> tuple[Advantages, torch.Tensor, torch.Tensor]:
    """``group_advantages`` of all ranks' completions (the batch std of ``scale_rewards="batch"`` is the global
    batch's) from this rank's ``rewards_per_func`` (N, K); returns the global statistics (N_all,) and this rank's
    advantages (N,) and groups-without-spread flags (N,). A collective when ``world_size`` > 1."""
    everyone, mine = gather_padded(rewards_per_func, world_size)
    stats = group_advantages(everyone, weights, num_generations, scale_rewards, aggregation)
    return stats, stats.advantages[mine], stats.group_without_spread[mine]
