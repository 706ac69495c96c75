"""The figure that compares evaluation runs: grouped bars of headline metrics, mean ± std over seeds."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

# Headless, as evaluation.plots (which this imports): the backend is chosen before pyplot loads.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation.formatting import as_float as _num  # noqa: E402
from evaluation.plots import save_figure  # noqa: E402

COMPARISON_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "auroc", "format_rate")


def plot_comparison(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metrics: Sequence[str] = COMPARISON_METRICS
) -> Path:
    """Grouped bars of headline metrics per run/group; ``rows`` = [{"name", "metrics": {metric: (mean, std)}}].

    Error bars are drawn where a std is given (finite); missing / NaN means leave a gap labelled "–".
    """
    metrics = list(metrics)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(metrics) * max(1, len(rows)) * 0.5 + 3), 4))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(metrics))
    for k, row in enumerate(rows):
        means, stds = [], []
        for m in metrics:
            value = row.get("metrics", {}).get(m)
            # Accept a bare number (single run) as well as (mean, std).
            mean, std = (
                (value[0], value[1] if len(value) > 1 else None) if isinstance(value, list | tuple) else (value, None)
            )
            means.append(_num(mean))
            stds.append(_num(std))
        heights = np.nan_to_num(np.asarray(means), nan=0.0)
        err = np.asarray(stds)
        # A zero std (single run) or a missing mean gets no error bar rather than a misleading flat cap.
        has_err = ~np.isnan(err) & ~np.isnan(np.asarray(means)) & (np.nan_to_num(err) > 0)
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(
            pos,
            heights,
            width,
            label=str(row.get("name")),
            yerr=np.where(has_err, err, np.nan) if has_err.any() else None,
            capsize=3,
        )
        for xi, mean in zip(pos, means, strict=True):
            if math.isnan(mean):
                ax.text(xi, 0.01, "–", ha="center", va="bottom")
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("Run comparison")
    if rows:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_figure(fig, path)
