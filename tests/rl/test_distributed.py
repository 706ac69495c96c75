"""GRPO's cross-rank bookkeeping without a Trainer: called directly in one process, and in two gloo processes whose
ranks hold different numbers of completions (as when one rank skipped bad samples)."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rl.advantages import global_group_advantages, group_advantages
from rl.distributed import gather_padded, global_token_count, lockstep_passes, reward_fault

NAN = float("nan")


def test_one_process_touches_no_process_group():
    rows = torch.tensor([[1.0, NAN], [0.0, 2.0]])
    everyone, mine = gather_padded(rows, world_size=1)
    assert everyone is rows and mine == slice(None)
    assert lockstep_passes(3, world_size=1, device="cpu") == 0
    assert global_token_count(torch.tensor([[1, 1, 0], [1, 0, 0]]), world_size=1) == 3.0
    assert not dist.is_initialized()


def test_a_reward_fault_names_the_broken_function_or_the_missing_rewards():
    names, rewards = ["accuracy", "format"], torch.tensor([1.0, NAN])
    assert reward_fault(names, {"format": 1}, 2, rewards, 1, "cpu") is None  # failed on one completion of two
    assert reward_fault(names, {"format": 2}, 2, rewards, 1, "cpu") == (
        "reward format raised or returned NaN on every completion"
    )
    assert reward_fault(names, {}, 2, torch.tensor([NAN, NAN]), 1, "cpu") == "no completion has a usable reward"


# Rank r holds 2 (r + 1) completions, groups of G = 2, scored by K = 2 reward functions.
def _rows(rank: int) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, NAN]])[: 2 * (rank + 1)] + rank / 3


def _two_ranks(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = _rows(rank)
        everyone, mine = gather_padded(rows, world_size=2)
        assert everyone.shape == (8, 2)  # both ranks padded to rank 1's 4 rows
        for got, expected in ((everyone[mine], rows), (everyone[0:2], _rows(0)), (everyone[4:8], _rows(1))):
            torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)  # bit for bit, NaN included
        assert torch.isnan(everyone[2:4]).all()  # rank 0's padding: an unscorable group
        assert lockstep_passes(1 + rank, world_size=2, device="cpu") == 1 - rank
        mask = torch.ones(len(rows), 5, dtype=torch.int)
        assert global_token_count(mask, world_size=2) == 5.0 * (2 + 4)
        errors = {"format": 4} if rank == 1 else {}  # failed on every completion of rank 1 only
        fault = reward_fault(["accuracy", "format"], errors, len(rows), everyone[:, 0], 2, "cpu")
        assert fault == "reward format raised or returned NaN on every completion"  # decided alike on both ranks
        # The padding stays out of every mean and std: the batch std is the one of the real rows of both ranks.
        weights = torch.tensor([1.0, 0.5])
        stats, advantages, no_spread = global_group_advantages(rows, weights, 2, "batch", "sum_then_normalize", 2)
        alone = group_advantages(torch.cat([_rows(0), _rows(1)]), weights, 2, "batch", "sum_then_normalize")
        real = slice(0, 2) if rank == 0 else slice(2, 6)
        torch.testing.assert_close(advantages, alone.advantages[real], rtol=0, atol=0)
        assert torch.equal(no_spread, alone.group_without_spread[real])
        assert stats.rewards.shape == (8,) and torch.isnan(stats.rewards[2:4]).all()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_agree_on_the_global_batch():
    mp.spawn(_two_ranks, args=(_free_port(),), nprocs=2, join=True)


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_one_process_advantages_are_the_plain_group_advantages(scale):
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, math.nan]])
    weights = torch.tensor([1.0, 0.5])
    stats, advantages, no_spread = global_group_advantages(rows, weights, 2, scale, "sum_then_normalize", 1)
    expected = group_advantages(rows, weights, 2, scale, "sum_then_normalize")
    assert torch.equal(advantages, expected.advantages) and torch.equal(no_spread, expected.group_without_spread)
    assert torch.equal(stats.rewards, expected.rewards)
