"""The CT-RATE 18-abnormality protocol's numbers: per-label and macro AUROC, F1, precision, recall and accuracy over
volumes, with percentile-bootstrap CIs.

Definitions are the VLM3D challenge's (task 2, ``abnclass_evaluation/calc_scores.py`` of forithmus/VLM3D-Dockers):
a label is predicted present when its probability is ≥ 0.5, precision with no predicted positive is 0, and macro
values are plain means over labels. One difference, on purpose: a label without positives in the split (or, for
AUROC, without negatives) is *undefined* (NaN here, null in JSON, "n/a" in tables) and left out of the macro mean,
where the challenge's script would count its precision, recall and F1 as 0. On real CT-RATE every label has
positives in the valid split, and the two agree.

Point estimates come from torchmetrics (``binary_auroc``, ``binary_f1_score``, ...). The bootstrap resamples
volumes with replacement; each resample is a vector of multiplicities, so every statistic of every resample is a few
matrix products (AUROC as the Mann-Whitney statistic, ties counting one half, which is exactly the trapezoidal ROC
area torchmetrics computes), and 1,000 resamples of 3,000 volumes take seconds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

from evaluation.metrics import percentile_interval

METRICS = ("auroc", "f1", "precision", "recall", "accuracy")
_POINT = {
    "f1": binary_f1_score,
    "precision": binary_precision,
    "recall": binary_recall,
    "accuracy": binary_accuracy,
}


def point_metrics(p_yes: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric per label on all volumes: {metric: (L,)}, NaN where undefined.

    ``p_yes`` (V, L) probabilities, ``truth`` (V, L) 0/1, ``predicted`` (V, L) 0/1 (the binary answers).
    """
    p, y, b = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (p_yes, truth, predicted))
    pos = y.sum(0).numpy()
    neg = len(y) - pos
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns of one-class labels, which are masked below anyway
        out["auroc"] = np.array([float(binary_auroc(p[:, i], y[:, i].long())) for i in range(y.shape[1])])
        for name, fn in _POINT.items():
            out[name] = np.array([float(fn(b[:, i], y[:, i].long())) for i in range(y.shape[1])])
    return _mask_undefined(out, pos, neg)


def _mask_undefined(values: dict[str, np.ndarray], pos: np.ndarray, neg: np.ndarray) -> dict[str, np.ndarray]:
    """NaN where a metric is undefined: no positives (all but accuracy), or no negatives (AUROC)."""
    out = {k: np.array(v, dtype=np.float64) for k, v in values.items()}
    for name in ("auroc", "f1", "precision", "recall"):
        out[name][pos == 0] = math.nan
    out["auroc"][neg == 0] = math.nan
    return out


def resample_metrics(
    counts: np.ndarray, p_yes: np.ndarray, truth: np.ndarray, predicted: np.ndarray
) -> dict[str, np.ndarray]:
    """Each metric per label on each resample: ``counts`` (B, V) multiplicities of the volumes → {metric: (B, L)}.

    The same numbers ``point_metrics`` gives for the volumes repeated ``counts`` times (tested against torchmetrics).
    """
    c = np.asarray(counts, dtype=np.float64)
    y, b = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    tp, fp, fn = c @ (y * b), c @ ((1 - y) * b), c @ (y * (1 - b))
    pos, total = c @ y, c.sum(1, keepdims=True)
    neg = total - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0),  # no predicted positive: 0
            "recall": tp / pos,
            "f1": np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            "accuracy": (total - fp - fn) / total,
            "auroc": np.stack([_auroc(c, p_yes[:, i], y[:, i]) for i in range(y.shape[1])], axis=1),
        }
    return _mask_undefined(out, pos, neg)


def _auroc(counts: np.ndarray, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) Mann-Whitney AUROC of one label on each resample: P(p_pos > p_neg) + ½ P(tie), weighted by counts."""
    values, group = np.unique(np.asarray(p, dtype=np.float64), return_inverse=True)  # tie groups, ascending
    n_b, n_g = counts.shape[0], len(values)
    key = (np.arange(n_b)[:, None] * n_g + group[None, :]).ravel()
    pos_g = np.bincount(key, weights=(counts * y).ravel(), minlength=n_b * n_g).reshape(n_b, n_g)
    neg_g = np.bincount(key, weights=(counts * (1 - y)).ravel(), minlength=n_b * n_g).reshape(n_b, n_g)
    below = np.cumsum(neg_g, axis=1) - neg_g  # negatives scored strictly lower than each group
    pairs = pos_g.sum(1) * neg_g.sum(1)
    return (pos_g * (below + 0.5 * neg_g)).sum(1) / pairs


def _macro(per_label: np.ndarray) -> np.ndarray:
    """Mean over the defined labels along the last axis (NaN if none is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_label, axis=-1)


def protocol_metrics(
    p_yes: np.ndarray,
    truth: np.ndarray,
    predicted: np.ndarray,
    labels: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict]:
    """{"per_label": {label: {"positives", "negatives", metric: {"value", "low", "high"}}}, "macro": {metric: …}}.

    Arrays are (V, L) over complete volumes; CIs are percentile intervals of ``n_boot`` resamples of the volumes
    (numpy generator seeded with ``seed``); NaN marks an undefined value (see the module docstring).
    """
    n_vol = len(truth)
    if n_vol == 0:
        raise ValueError("no volume with every label answered: nothing to score")
    point = point_metrics(p_yes, truth, predicted)
    rng = np.random.default_rng(seed)
    reps: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for start in range(0, n_boot, 100):  # 100 resamples at a time: (100, V) multiplicities in memory
        idx = rng.integers(0, n_vol, size=(min(100, n_boot - start), n_vol))
        counts = np.stack([np.bincount(row, minlength=n_vol) for row in idx])
        for name, values in resample_metrics(counts, np.asarray(p_yes, dtype=np.float64), truth, predicted).items():
            reps[name].append(values)
    boot = {m: np.concatenate(v) if v else np.zeros((0, len(labels))) for m, v in reps.items()}
    pos = np.asarray(truth).sum(0)
    per_label: dict[str, dict] = {}
    for i, label in enumerate(labels):
        entry: dict = {"positives": int(pos[i]), "negatives": int(n_vol - pos[i])}
        for m in METRICS:
            low, high = (
                percentile_interval(boot[m][:, i], confidence) if not math.isnan(point[m][i]) else (math.nan, math.nan)
            )
            entry[m] = {"value": float(point[m][i]), "low": low, "high": high}
        per_label[label] = entry
    macro: dict[str, dict] = {}
    for m in METRICS:
        low, high = percentile_interval(_macro(boot[m]), confidence)
        defined = int((~np.isnan(point[m])).sum())
        macro[m] = {"value": float(_macro(point[m])), "low": low, "high": high, "labels": defined}
    return {"per_label": per_label, "macro": macro, "volumes": n_vol, "n_boot": n_boot, "confidence": confidence}
