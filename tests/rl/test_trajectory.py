"""The trajectory's fields: what rewards see, which tokens count, the micro-batches, and one micro-batch's loss."""

from __future__ import annotations

import torch

from rl.advantages import group_advantages
from rl.config import LossArgs
from rl.loss import policy_loss
from rl.sampling import Rollout
from rl.trajectory import GRPOStats, GRPOTrajectory, loss_mask, micro_batches, reward_fields

# Two prompts × G = 2 completions of up to 4 tokens; completion 1 has no end token (truncated).
ROLLOUT = Rollout(
    completion_ids=torch.tensor([[5, 6, 2, 0], [7, 8, 9, 4], [5, 2, 0, 0], [6, 6, 2, 0]]),
    completion_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.int),
    is_truncated=torch.tensor([False, True, False, False]),
    sampling_logps=None,
    num_generations=2,
)
BATCH = {"meta": [{"id": "a", "answer": "yes"}, {"id": "b", "answer": "no"}]}


def test_reward_fields_repeat_each_prompts_columns_for_its_completions():
    fields = reward_fields(BATCH, ROLLOUT, max_completion_length=4)
    assert fields["id"] == ["a", "a", "b", "b"] and fields["answer"] == ["yes", "yes", "no", "no"]
    assert fields["completion_length"] == [3, 4, 2, 3] and fields["max_completion_length"] == [4] * 4


def test_loss_mask_drops_truncated_completions_and_groups_without_spread():
    no_spread = torch.tensor([False, False, True, True])
    assert torch.equal(loss_mask(ROLLOUT, no_spread, False, False), ROLLOUT.completion_mask)
    assert loss_mask(ROLLOUT, no_spread, True, False).sum(1).tolist() == [3, 0, 2, 3]
    assert loss_mask(ROLLOUT, no_spread, True, True).sum(1).tolist() == [3, 0, 0, 0]
    assert loss_mask(ROLLOUT, no_spread, False, False) is not ROLLOUT.completion_mask  # never the rollout's own


def test_micro_batches_cover_the_rows_in_order():
    assert micro_batches(8, 3) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert micro_batches(8, None) == micro_batches(8, 0) == [slice(0, 8)]


def _trajectory(old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None) -> GRPOTrajectory:
    scores = torch.tensor([[1.0], [0.0], [0.5], [0.25]])
    stats = group_advantages(scores, torch.tensor([1.0]), 2)
    mask = loss_mask(ROLLOUT, stats.group_without_spread, True, False)
    return GRPOTrajectory(
        batch=BATCH,
        rollout=ROLLOUT,
        completions=["a", "b", "c", "d"],
        fields=reward_fields(BATCH, ROLLOUT, 4),
        rewards_per_func=scores,
        reward_errors={},
        stats=stats,
        advantages=stats.advantages,
        loss_mask=mask,
        num_items=float(mask.sum()),
        micro_batches=micro_batches(4, 2),
        lockstep_passes=0,
        fault=None,
        old_logps=old_logps,
        ref_logps=ref_logps,
    )


def test_a_micro_batch_loss_is_the_policy_loss_of_its_rows():
    torch.manual_seed(0)
    old, ref, logps = (torch.randn(4, 4) - 1 for _ in range(3))
    trajectory = _trajectory(old, ref)
    loss = LossArgs(loss_type="dapo", beta=0.04, epsilon_high=0.28)
    rows = slice(2, 4)
    terms, mask = trajectory.micro_batch_loss(logps[rows], rows, 1, loss, max_completion_length=4, world_size=1)
    expected = policy_loss(
        logps[rows],
        old[rows],
        trajectory.advantages[rows],
        trajectory.loss_mask[rows],
        loss_type="dapo",
        epsilon_low=0.2,
        epsilon_high=0.28,
        beta=0.04,
        ref_logps=ref[rows],
        max_completion_length=4,
        num_micro_batches=2,
        num_items_in_batch=trajectory.num_items,
    )
    assert torch.equal(terms.loss, expected.loss) and torch.equal(mask, trajectory.loss_mask[rows])
    stats = GRPOStats()
    stats.add_pass(terms, torch.ones(2, 4), mask)
    assert len(stats.low_clipped) == len(stats.high_clipped) == len(stats.entropy) == len(stats.kl) == 1
    assert stats.entropy[0].item() == 1.0


def test_a_lockstep_pass_changes_nothing():
    logps = torch.randn(1, 4, requires_grad=True)
    terms, mask = _trajectory(None, None).micro_batch_loss(logps, slice(0, 1), 0, LossArgs(), 4, world_size=1)
    terms.loss.backward()
    assert terms.loss.item() == 0.0 and not mask.any() and not logps.grad.any()
