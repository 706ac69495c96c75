"""One seed for a run: settings left at ``None`` follow ``seed_everything`` (Lightning's ``PL_GLOBAL_SEED``)."""

from __future__ import annotations

import os


def resolve_seed(value: int | None) -> int:
    """``value`` when set, else the run's global seed (``seed_everything`` of the config), else 0."""
    if value is not None:
        return int(value)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))
