"""A GRPO step's metrics (TRL's names), their reduction over ranks, the completions table, the validation rewards."""

from __future__ import annotations

import math

import pytest
import torch
from rich.console import Console

from rl.advantages import group_advantages
from rl.metrics import ValidationRewards, completions_table, reduce_fx, step_metrics, unique_names
from rl.sampling import Rollout
from rl.trajectory import GRPOStats, GRPOTrajectory, loss_mask, micro_batches, reward_fields

NAN = float("nan")


def _trajectory() -> GRPOTrajectory:
    """One prompt × G = 2: one right and well-formed completion, one neither; two reward functions."""
    rollout = Rollout(
        torch.tensor([[5, 2, 0], [7, 8, 9]]),
        torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.int),
        torch.tensor([False, True]),
        None,
        2,
    )
    batch = {"meta": [{"question": "Nodule?", "answer": "yes", "options": ["yes", "no"], "prompt_format": "think"}]}
    texts = ["<think>a</think><answer>yes</answer>", "no idea"]
    scores = torch.tensor([[1.0, 1.0], [0.0, NAN]])
    stats = group_advantages(scores, torch.tensor([1.0, 0.5]), 2)
    mask = loss_mask(rollout, stats.group_without_spread, False, False)
    fields = reward_fields(batch, rollout, 3)
    errors = {"format_reward": 1}
    chunks = micro_batches(2, None)
    return GRPOTrajectory(
        batch, rollout, texts, fields, scores, errors, stats, stats.advantages, mask, 5.0, chunks, 0, None
    )


def test_step_metrics_have_trls_names_and_this_steps_values():
    stats = GRPOStats(loss=[torch.tensor(0.5), torch.tensor(1.5)], entropy=[torch.tensor(2.0)])
    stats.low_clipped, stats.high_clipped = [torch.tensor(0.25)], [torch.tensor(0.5)]
    values = step_metrics(_trajectory(), stats, ["accuracy_reward", "format_reward"], True, 1e-5, 3)
    assert values["accuracy"].item() == 0.5 and values["format_rate"].item() == 0.5
    assert values["reward"].item() == 0.75  # (1 + 0.5 · 1, 0): the weighted sums' mean
    assert values["policy_loss"].item() == 1.0 and values["clip_ratio/region_mean"].item() == 0.75
    assert values["completions/min_length"].item() == 2 and values["completions/max_length"].item() == 3
    assert values["completions/clipped_ratio"].item() == 0.5 and values["skipped_steps"].item() == 3.0
    assert values["rewards/format_reward/mean"].item() == 1.0  # the NaN (not applicable) left out
    assert values["rewards/format_reward/errors"].item() == 1.0 and "kl" not in values
    quiet = step_metrics(_trajectory(), stats, ["accuracy_reward", "format_reward"], False, 1e-5, 3)
    assert not any(key.endswith("/errors") for key in quiet)
    assert list(quiet)[:3] == ["reward", "reward_std", "accuracy"]  # the logging order


def test_each_metric_is_reduced_over_ranks_as_it_means():
    assert reduce_fx("rewards/accuracy_reward/errors") == "sum"
    assert reduce_fx("completions/min_length") == "min" and reduce_fx("completions/max_length") == "max"
    assert reduce_fx("reward") == "mean"


def test_repeated_reward_names_stay_apart():
    assert unique_names(["length_penalty", "accuracy", "length_penalty"]) == [
        "length_penalty",
        "accuracy",
        "length_penalty_2",
    ]


def test_the_completions_table_shows_each_completion_with_its_rewards_and_advantage():
    table = completions_table(_trajectory(), ["accuracy_reward", "format_reward"], 4, "GRPO completions, step 3")
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "GRPO completions, step 3" in text and "Nodule?" in text and "no idea" in text
    assert "+0.71" in text and "-0.71" in text and "–" in text  # advantages; the NaN reward as a dash
    assert table.row_count == 2


def test_validation_rewards_leave_out_padding_and_not_applicable_values():
    rewards = ValidationRewards(["accuracy_reward", "format_reward"])
    scores = torch.tensor([[1.0, NAN], [0.0, 1.0], [1.0, 1.0]])
    rewards.update(scores, torch.tensor([1.0, 0.5]), padding=torch.tensor([False, False, True]))
    out = rewards.compute_and_reset()
    assert list(out) == ["val/reward", "val/rewards/accuracy_reward/mean", "val/rewards/format_reward/mean"]
    assert out["val/reward"].item() == 0.75 and out["val/rewards/accuracy_reward/mean"].item() == 0.5
    assert out["val/rewards/format_reward/mean"].item() == 1.0
    with pytest.warns(UserWarning, match="before the ``update``"):  # reset: nothing seen since
        assert math.isnan(rewards.compute_and_reset()["val/reward"].item())
