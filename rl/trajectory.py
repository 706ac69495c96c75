"""One GRPO rollout on its way from sampling to the update, and what the update reports (torchtune's
``GRPOTrajectory`` and ``GRPOStats``), with the plain functions that fill the trajectory's fields.

Shapes: B prompts on this rank, G completions per prompt, N = B · G completions (rows grouped by prompt: rows
i·G … i·G + G − 1 share prompt i), L the longest completion's tokens, K reward functions, N_all the completions of
all ranks (padded to one count per rank, ``rl.distributed.gather_padded``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rl.advantages import Advantages
from rl.config import LossArgs
from rl.loss import LossTerms, masked_mean, policy_loss
from rl.sampling import Rollout


@dataclass
class GRPOTrajectory:
    """Everything one rollout's updates need (``GRPOModule.generate_trajectory`` → ``GRPOModule.grpo_step``)."""

    batch: dict[str, Any]
    """The collated prompts: B rows of prompt ids, masks and images, and B ``meta`` dicts."""
    rollout: Rollout
    """completion_ids (N, L) long, completion_mask (N, L) int, is_truncated (N,) bool."""
    completions: list[str]
    """N decoded completions, special tokens left out (what the rewards read)."""
    fields: dict[str, list]
    """The reward functions' keyword arguments: N values per key (``reward_fields``)."""
    rewards_per_func: torch.Tensor
    """(N, K) float, this rank's scores, NaN where a function does not apply (or failed, ``reward_errors: none``)."""
    reward_errors: dict[str, int]
    """Failed calls per reward name on this rank."""
    stats: Advantages
    """Advantages and reward statistics of all ranks' completions: (N_all,) and (N_all, K) tensors."""
    advantages: torch.Tensor
    """(N,) float, this rank's advantages."""
    loss_mask: torch.Tensor
    """(N, L) int, 1 for the completion tokens that count in the loss (``loss_mask``)."""
    num_items: float
    """Tokens of ``loss_mask`` on all ranks (dapo's normaliser)."""
    micro_batches: list[slice]
    """Rows of each forward/backward pass."""
    lockstep_passes: int
    """Zero-weight passes this rank adds to run as many sharded passes as the busiest rank."""
    fault: str | None
    """Why these rewards cannot drive an update (every step of the rollout is then skipped), None when they can."""
    old_logps: torch.Tensor | None = None
    """(N, L) float, the rollout policy's log-probs, fixed over the μ updates (μ > 1 only; μ = 1: the current)."""
    ref_logps: torch.Tensor | None = None
    """(N, L) float, the reference policy's log-probs (beta ≠ 0 only)."""

    def micro_batch_loss(
        self,
        logps: torch.Tensor,
        rows: slice,
        weight: int,
        loss: LossArgs,
        max_completion_length: int,
        world_size: int,
    ) -> tuple[LossTerms, torch.Tensor]:
        """The loss terms of micro-batch ``rows`` (R completions) given the current policy's ``logps`` (R, L), and
        the (R, L) mask they count over. ``weight`` 0: a lockstep pass, whose loss and gradients are zero."""
        mask = self.loss_mask[rows] * weight
        terms = policy_loss(
            logps,
            None if self.old_logps is None else self.old_logps[rows],
            self.advantages[rows],
            mask,
            loss_type=loss.loss_type,
            epsilon_low=loss.epsilon,
            epsilon_high=loss.upper_epsilon,
            beta=loss.beta,
            ref_logps=None if self.ref_logps is None else self.ref_logps[rows],
            importance_sampling_level=loss.importance_sampling_level,
            max_completion_length=max_completion_length,
            num_micro_batches=len(self.micro_batches),
            num_items_in_batch=self.num_items,
            world_size=world_size,
        )
        return terms, mask


@dataclass
class GRPOStats:
    """What one rollout's updates report, as 0-dim tensors: the loss per optimizer step (0 for a skipped one); per
    micro-batch pass the masked means of the clip flags, the entropy and (beta ≠ 0) the KL."""

    loss: list[torch.Tensor] = field(default_factory=list)
    kl: list[torch.Tensor] = field(default_factory=list)
    low_clipped: list[torch.Tensor] = field(default_factory=list)
    high_clipped: list[torch.Tensor] = field(default_factory=list)
    entropy: list[torch.Tensor] = field(default_factory=list)

    def add_pass(self, terms: LossTerms, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        """Record one micro-batch pass: its clip flags', entropy's (R, L) and KL's means over ``mask`` (R, L)."""
        self.low_clipped.append(masked_mean(terms.low_clipped, mask))
        self.high_clipped.append(masked_mean(terms.high_clipped, mask))
        self.entropy.append(masked_mean(entropy, mask))
        if terms.per_token_kl is not None:
            self.kl.append(masked_mean(terms.per_token_kl, mask))


def reward_fields(batch: dict[str, Any], rollout: Rollout, max_completion_length: int) -> dict[str, list]:
    """The dataset columns of each completion's prompt (every ``meta`` key, repeated G times), plus its token
    count (``completion_length``) and budget (``max_completion_length``): N values per key."""
    g = rollout.num_generations
    meta = [m for m in batch["meta"] for _ in range(g)]
    fields = {key: [m.get(key) for m in meta] for key in meta[0]}
    fields["completion_length"] = rollout.completion_mask.sum(1).tolist()
    fields["max_completion_length"] = [max_completion_length] * len(meta)
    return fields


def loss_mask(
    rollout: Rollout, no_spread: torch.Tensor, mask_truncated_completions: bool, dynamic_sampling: bool
) -> torch.Tensor:
    """Which completion tokens count in the loss, (N, L): the completion mask, less truncated completions'
    tokens (``mask_truncated_completions``) and those of groups without spread (``no_spread`` (N,) bool, with
    ``dynamic_sampling``)."""
    mask = rollout.completion_mask.clone()
    if mask_truncated_completions:
        mask = mask * (~rollout.is_truncated).unsqueeze(1)
    if dynamic_sampling:
        mask = mask * (~no_spread).unsqueeze(1)
    return mask


def micro_batches(num_rows: int, size: int | None) -> list[slice]:
    """Consecutive row slices of at most ``size`` rows (the last may be shorter) covering ``num_rows``; one slice
    of all rows when ``size`` is None or 0."""
    size = size or num_rows
    return [slice(i, min(i + size, num_rows)) for i in range(0, num_rows, size)]
