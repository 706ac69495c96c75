"""The cross-rank bookkeeping of a GRPO step, as plain functions of tensors and the world size.

Every rank calls each of these at the same point of the step (they are collectives when ``world_size`` > 1, and
touch no process group otherwise), so ranks that hold different numbers of completions (bad samples skipped)
still agree on the batch statistics, the loss normaliser, the number of sharded passes and whether to update.
``world_size`` is the trainer's; the rank is the default process group's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_padded(rows: torch.Tensor, world_size: int) -> tuple[torch.Tensor, slice]:
    """Every rank's ``rows`` (R_r, K), and where this rank's are among them.

    Ranks may hold different R_r: each pads its rows with NaN to the most any rank holds (M), so all gather
    tensors of one shape; NaN rows are unscorable completions, which stay out of every mean and std. Returns the
    (world_size · M, K) rows in rank order and this rank's slice of them; one process: ``rows`` itself and
    ``slice(None)``.
    """
    n = rows.size(0)
    if world_size == 1:
        return rows, slice(None)
    most = torch.tensor(n, device=rows.device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    padded = rows.new_full((int(most), rows.size(1)), float("nan"))
    padded[:n] = rows
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    start = dist.get_rank() * int(most)
    return torch.cat(gathered), slice(start, start + n)


def lockstep_passes(num_passes: int, world_size: int, device: torch.device | str) -> int:
    """How many extra (zero-weight) forward/backward passes this rank runs so that every rank runs as many
    sharded passes as the busiest one: under FSDP2 each pass gathers parameters, a collective all must join."""
    if world_size == 1:
        return 0
    count = torch.tensor(num_passes, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count) - num_passes


def global_token_count(mask: torch.Tensor, world_size: int) -> float:
    """Masked-in tokens of ``mask`` (N, L) summed over all ranks: dapo's loss normaliser (TRL's
    ``num_items_in_batch``)."""
    num_items = mask.sum().float()
    if world_size > 1:
        dist.all_reduce(num_items)
    return float(num_items)


def reward_fault(
    reward_names: list[str],
    errors: dict[str, int],
    num_completions: int,
    rewards: torch.Tensor,
    world_size: int,
    device: torch.device | str,
) -> str | None:
    """Why this rollout's rewards cannot drive an update (None when they can), decided alike on all ranks.

    A reward function that failed (``errors``: failed calls per name) on every one of this rank's
    ``num_completions`` on any rank, since the weighted sum would silently lose a term; or no completion of
    ``rewards`` (N_all,), the global weighted rewards with NaN where none applied, has any reward at all.
    """
    failed = torch.tensor([float(errors.get(name, 0) >= num_completions) for name in reward_names], device=device)
    if world_size > 1:
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    broken = [name for name, f in zip(reward_names, failed.tolist(), strict=True) if f]
    if broken:
        return f"reward {', '.join(broken)} raised or returned NaN on every completion"
    if bool(torch.isnan(rewards).all()):
        return "no completion has a usable reward"
    return None
