"""Learning-rate schedules shared by the training modules."""

from __future__ import annotations

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` × the base rate at ``total_steps`` (optimizer steps).

    The rate factor at step s (0-based) is (s + 1) / (warmup_steps + 1) while s < warmup_steps, then
    ``min_lr_ratio`` + (1 - ``min_lr_ratio``) · ½(1 + cos(π (s - warmup_steps) / (total_steps - warmup_steps))):
    the warmup never gives a zero rate, and ``min_lr_ratio`` = 1 is a constant rate after it. Warmup is cut to
    ``total_steps``. Past ``total_steps`` the factor is ``min_lr_ratio``.

    This is transformers' ``cosine_warmup_with_min_lr`` (``get_cosine_with_min_lr_schedule_with_warmup_lr_rate``,
    whose ramp is (s + 1) / warmup) with both step counts one more than ours: its ramp then is ours, and its cosine
    starts at our step ``warmup_steps`` with our horizon; same factors to the bit
    (``tests/training/test_schedules.py``).
    The plain ``cosine_with_min_lr`` ramps s / warmup from a zero rate, so agrees only at ``warmup_steps`` = 0.
    """
    total_steps = max(total_steps, 1)
    warmup_steps = min(warmup_steps, total_steps)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer,
        num_warmup_steps=warmup_steps + 1,
        num_training_steps=total_steps + 1,
        min_lr_rate=min_lr_ratio,
    )
    # GRPO with μ > 1 may step past total_steps inside its last rollout: the floor there, as before the swap (the
    # cosine transformers continues would rise again).
    scheduler.lr_lambdas = [
        lambda step, f=f: f(step) if step <= total_steps else min_lr_ratio for f in scheduler.lr_lambdas
    ]
    return scheduler
