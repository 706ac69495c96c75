"""The learning-rate schedule: transformers' cosine with a floor gives the factors our own code gave, to the bit."""

from __future__ import annotations

import math

import pytest
import torch

from training.schedules import warmup_cosine


def reference_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """``training/schedules.py``'s own factor before it called transformers (at 4dc26ed), kept as the reference."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


CASES = [  # (warmup_steps, total_steps, min_lr_ratio)
    (5, 100, 1.0),  # configs/grpo.yaml: constant after warmup
    (30, 400, 0.1),  # configs/sft.yaml's warmup and default floor
    (200, 3000, 0.1),
    (0, 50, 0.1),
    (0, 50, 1.0),
    (0, 1, 0.0),
    (3, 3, 0.5),
    (7, 5, 0.1),  # warmup longer than the run: cut to it
    (10, 57, 1 / 3),
    (4, 0, 0.2),  # no steps: a horizon of one
]


@pytest.mark.parametrize(("warmup", "total", "min_lr_ratio"), CASES)
def test_learning_rates_equal_the_old_schedule_bit_for_bit(warmup, total, min_lr_ratio):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    scheduler = warmup_cosine(optimizer, total_steps=total, warmup_steps=warmup, min_lr_ratio=min_lr_ratio)
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(max(total, 1) + 5):  # once per optimizer step; GRPO's μ > 1 may step past the total
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    expected = [3e-4 * reference_factor(s, total, warmup, min_lr_ratio) for s in range(len(rates))]
    assert rates == expected  # exact float equality, no tolerance
    assert rates[0] > 0  # the warmup starts above zero
