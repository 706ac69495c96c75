"""Matplotlib figures for an evaluation run folder; each function writes one PNG atomically and returns its path.

``evaluation.comparison_plot`` draws the figure that compares runs with ``save_figure``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

from common.files import atomic_path

# Headless: evaluation runs on cluster nodes without a display; select the backend before pyplot loads.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from evaluation.formatting import as_float as _num  # noqa: E402
from evaluation.formatting import qtype_key  # noqa: E402

INVALID = "invalid"


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically (:func:`common.files.atomic_path`): readers never see half a file."""
    try:
        with atomic_path(path) as tmp:
            # Explicit format: the temp suffix is not .png, so matplotlib cannot infer it.
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def plot_abnormality_f1(per_abnormality: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Horizontal F1 bars per abnormality label (sorted by F1), support in the label; support-0 labels greyed at 0."""
    rows = []
    for label, stats in per_abnormality.items():
        support = _num(stats.get("support"))
        rows.append((str(label), 0 if math.isnan(support) else int(support), _num(stats.get("f1"))))
    # barh draws index 0 at the bottom: undefined F1 (no support) lowest, then ascending F1 so the best is on top.
    rows.sort(key=lambda r: (r[1] > 0 and not math.isnan(r[2]), 0.0 if math.isnan(r[2]) else r[2], r[0]))

    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.35 * len(rows) + 1.0)))
    if not rows:
        ax.text(0.5, 0.5, "no abnormality labels", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_figure(fig, path)
    y = np.arange(len(rows))
    values = [0.0 if math.isnan(f1) else f1 for _, _, f1 in rows]
    # Labels absent from the split have no meaningful F1: keep them visible but grey so gaps are obvious.
    colors = ["lightgrey" if support == 0 or math.isnan(f1) else "tab:blue" for _, support, f1 in rows]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, [f"{label} (n={support})" for label, support, _ in rows])
    for tick, (_, support, f1) in zip(ax.get_yticklabels(), rows, strict=True):
        if support == 0 or math.isnan(f1):
            tick.set_color("grey")
    for yi, (_, _, f1) in zip(y, rows, strict=True):
        ax.text((0.0 if math.isnan(f1) else f1) + 0.01, yi, "–" if math.isnan(f1) else f"{f1:.2f}", va="center")
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("F1")
    ax.set_title("F1 per abnormality")
    return save_figure(fig, path)


def _confusion(preds: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows = truths seen, columns = options seen (+ "invalid"), counts of predictions."""
    options: list[str] = []
    for p in preds:
        for o in [*(p.get("options") or []), p.get("truth")]:
            if o is not None and str(o) not in options:
                options.append(str(o))
    truths = [o for o in options if any(str(p.get("truth")) == o for p in preds)]
    cols = [*options, INVALID]
    counts = np.zeros((len(truths), len(cols)), dtype=int)
    for p in preds:
        answer = p.get("answer")
        # An answer outside this sample's options is a failure to choose, whatever its text.
        col = cols.index(str(answer)) if answer is not None and p.get("valid") and str(answer) in options else -1
        counts[truths.index(str(p.get("truth"))), col] += 1
    return truths, cols, counts


def plot_confusion_matrices(predictions: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """One annotated confusion matrix per question type: truth rows vs predicted option columns + "invalid"."""
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for p in predictions:
        by_type.setdefault(str(p.get("question_type")), []).append(p)
    qtypes = sorted(by_type, key=qtype_key)
    if not qtypes:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_figure(fig, path)

    mats = [_confusion(by_type[q]) for q in qtypes]
    widths = [max(3.0, 0.55 * len(cols) + 1.5) for _, cols, _ in mats]
    height = max(3.0, 0.45 * max(len(t) for t, _, _ in mats) + 2.0)
    fig, axes = plt.subplots(
        1, len(qtypes), figsize=(sum(widths), height), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, qtype, (truths, cols, counts) in zip(axes[0], qtypes, mats, strict=True):
        ax.imshow(counts, cmap="Blues", aspect="auto", vmin=0, vmax=max(1, int(counts.max())))
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
        ax.set_yticks(range(len(truths)), truths)
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title(f"{qtype} (n={int(counts.sum())})")
        threshold = counts.max() / 2 if counts.size else 0
        for (i, j), c in np.ndenumerate(counts):
            ax.text(j, i, str(c), ha="center", va="center", fontsize=8, color="white" if c > threshold else "black")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_calibration(
    calibration: Mapping[str, Sequence[Any]], path: str | os.PathLike, ece: float | None = None
) -> Path:
    """Reliability diagram (fraction positive vs mean confidence per bin) with a bin-count histogram below."""
    edges = np.asarray([_num(e) for e in calibration.get("bin_edges", [])], dtype=float)
    conf = np.asarray([_num(c) for c in calibration.get("mean_confidence", [])], dtype=float)
    frac = np.asarray([_num(f) for f in calibration.get("fraction_positive", [])], dtype=float)
    count = np.asarray([_num(c) for c in calibration.get("count", [])], dtype=float)
    if edges.size < 2:
        edges = np.linspace(0.0, 1.0, max(conf.size, 1) + 1)

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    # Empty bins have undefined means; plot only bins that hold samples.
    keep = (np.nan_to_num(count) > 0) & ~np.isnan(conf) & ~np.isnan(frac)
    ax.plot(conf[keep], frac[keep], marker="o", color="tab:blue", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction positive")
    ece_text = "–" if ece is None or math.isnan(_num(ece)) else f"{_num(ece):.3f}"
    ax.set_title(f"Reliability (presence, P(yes)) — ECE {ece_text}")
    ax.legend(loc="upper left")

    n_bins = min(count.size, edges.size - 1)
    if n_bins:
        axh.bar(
            edges[:n_bins],
            np.nan_to_num(count[:n_bins]),
            width=np.diff(edges)[:n_bins],
            align="edge",
            color="tab:blue",
            alpha=0.6,
            edgecolor="white",
        )
    axh.set_xlabel("mean confidence")
    axh.set_ylabel("count")
    fig.tight_layout()
    return save_figure(fig, path)
