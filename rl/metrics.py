"""A GRPO step's metrics with TRL's names and how each is reduced over ranks, the completions table, and the
validation rewards."""

from __future__ import annotations

import math

import torch
from rich.console import Console
from rich.table import Table
from torchmetrics import MeanMetric

from rewards.format import format_reward
from rewards.parsing import is_correct
from rl.advantages import nanstd, weighted_reward
from rl.trajectory import GRPOStats, GRPOTrajectory

# Shown in the progress bar.
SHOWN = frozenset({"reward", "accuracy", "format_rate", "kl"})
# How each metric is reduced over ranks (``self.log``'s reduce_fx); "mean" unless named here or ending in /errors.
_REDUCE = {"completions/min_length": "min", "completions/max_length": "max"}


def reduce_fx(key: str) -> str:
    """Lightning's ``reduce_fx`` of metric ``key``: error counts add up, lengths keep their extremes, others average."""
    return "sum" if key.endswith("/errors") else _REDUCE.get(key, "mean")


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean() if values else torch.tensor(0.0)


def step_metrics(
    trajectory: GRPOTrajectory,
    stats: GRPOStats,
    reward_names: list[str],
    count_errors: bool,
    lr: float,
    skipped_steps: int,
) -> dict[str, torch.Tensor]:
    """One rollout's metrics (keys without the ``train/`` prefix), each a 0-dim tensor, in logging order.

    Accuracy and format rate whatever the rewards are; ``rewards/<name>/errors`` only with ``count_errors``
    (``reward_errors: none``), on every step and rank alike, since logging is a collective. ``lr`` is the learning
    rate after the step, ``skipped_steps`` the run's count of skipped (faulty) steps.
    """
    completions, fields, rollout = trajectory.completions, trajectory.fields, trajectory.rollout
    everyone = trajectory.stats  # all ranks' rewards
    n = len(completions)
    correct = [is_correct(c, a, o) for c, a, o in zip(completions, fields["answer"], fields["options"], strict=True)]
    formatted = format_reward(completions, prompt_format=fields.get("prompt_format"))
    lengths = rollout.completion_mask.sum(1).float()
    values = {
        "reward": torch.nanmean(everyone.rewards),
        "reward_std": nanstd(everyone.rewards),
        "accuracy": torch.tensor(sum(correct) / n),
        "format_rate": torch.tensor(sum(formatted) / n),
        "frac_reward_zero_std": everyone.is_std_zero.float().mean(),
        "policy_loss": torch.stack(stats.loss).mean(),
        "clip_ratio/low_mean": _mean(stats.low_clipped),
        "clip_ratio/high_mean": _mean(stats.high_clipped),
        "clip_ratio/region_mean": _mean(stats.low_clipped) + _mean(stats.high_clipped),
        "entropy": _mean(stats.entropy),
        "completions/mean_length": lengths.mean(),
        "completions/min_length": lengths.min(),
        "completions/max_length": lengths.max(),
        "completions/clipped_ratio": rollout.is_truncated.float().mean(),
        "lr": torch.tensor(lr),
        "skipped_steps": torch.tensor(float(skipped_steps)),
    }
    if stats.kl:
        values["kl"] = _mean(stats.kl)
    # From every rank's rewards (``everyone``): a function that applies to no completion of
    # one rank would make that rank's mean NaN, and the synced mean of [NaN, x] is NaN. The global nanmean is
    # the count-weighted mean over the ranks that have values, the same on every rank.
    for i, name in enumerate(reward_names):
        values[f"rewards/{name}/mean"] = torch.nanmean(everyone.rewards_per_func[:, i])
        values[f"rewards/{name}/std"] = nanstd(everyone.rewards_per_func[:, i])
        if count_errors:
            values[f"rewards/{name}/errors"] = torch.tensor(float(trajectory.reward_errors.get(name, 0)))
    return values


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def completions_table(trajectory: GRPOTrajectory, reward_names: list[str], num_rows: int, title: str) -> Table:
    """The first ``num_rows`` completions of this rank with their question, answer, rewards and advantage."""
    g = trajectory.rollout.num_generations
    table = Table(title=title, show_lines=True)
    table.add_column("question", overflow="fold", ratio=2)
    table.add_column("answer", overflow="fold", ratio=1)
    table.add_column("completion", overflow="fold", ratio=5)
    for column in (*reward_names, "advantage"):
        table.add_column(column, justify="right")
    for i in range(min(num_rows, len(trajectory.completions))):
        meta = trajectory.batch["meta"][i // g]
        table.add_row(
            meta["question"],
            meta["answer"],
            trajectory.completions[i],
            *[_fmt(v) for v in trajectory.rewards_per_func[i].tolist()],
            f"{trajectory.advantages[i].item():+.2f}",
        )
    return table


def print_table(table: Table) -> None:
    """Print ``table`` at least 160 columns wide: logs to files and pipes default to 80."""
    console = Console()
    console.width = max(console.width, 160)
    console.print(table)


def unique_names(names: list[str]) -> list[str]:
    """Reward names for logs and metrics; a repeated name (two LengthPenalty instances) gets _2, _3, …"""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


class ValidationRewards(torch.nn.Module):
    """TRL's eval rewards: the means of the weighted reward and of each function's over sampled validation
    completions. NaN (a reward that does not apply) is left out; torchmetrics reduces the means across ranks."""

    def __init__(self, reward_names: list[str]) -> None:
        super().__init__()
        self.reward_names = list(reward_names)
        self.means = torch.nn.ModuleDict(
            {name: MeanMetric(nan_strategy="ignore") for name in ["reward", *reward_names]}
        )

    def update(self, rewards_per_func: torch.Tensor, weights: torch.Tensor, padding: torch.Tensor) -> None:
        """Add completions' scores ``rewards_per_func`` (N, K) under ``weights`` (K,); rows where ``padding`` (N,)
        is set (repeats that even out a distributed split) are left out: set to NaN, in place."""
        rewards_per_func[padding] = float("nan")
        self.means["reward"].update(weighted_reward(rewards_per_func, weights))
        for i, name in enumerate(self.reward_names):
            self.means[name].update(rewards_per_func[:, i])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """The means under their logged names (``val/reward``, ``val/rewards/<name>/mean``); then start afresh."""
        out = {}
        for name, metric in self.means.items():
            out["val/reward" if name == "reward" else f"val/rewards/{name}/mean"] = metric.compute()
            metric.reset()
        return out
