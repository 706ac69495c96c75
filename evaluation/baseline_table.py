"""The comparison table's numbers for one model: every column from ``predictions.jsonl``, with a 95 % CI.

Columns (``columns``): accuracy per question type, their mean (MedReason-R1's "average", arXiv 2510.19626), overall
accuracy, macro F1 and AUROC over abnormalities (presence questions), format and validity rates. Each is defined
exactly as ``evaluation.metrics`` / ``evaluation.detection`` define it, so the point estimates equal the run's
``metrics.json`` (``mismatches`` checks it).

CIs: percentile bootstrap over questions (the unit a benchmark samples). Rows are sorted by id first, so every model
evaluated on the same questions gets the same resamples. A replicate where a statistic is undefined (a resample
with one class only, for AUROC) is left out of that statistic's quantiles: scipy.stats.bootstrap would return NaN
for the whole interval, and replicates are cheap here as vectorised numpy (one ``bincount`` per chunk).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from datamodules.ctrate import CTRATE_LABELS
from evaluation.detection import auroc_or_nan
from evaluation.formatting import qtype_key
from evaluation.metrics import percentile_interval
from rewards.parsing import answer_text

SUMMARY = ("average", "accuracy", "macro_f1", "auroc", "format_rate", "validity_rate")
# Columns metrics.json also holds, under the same key; "average" is the table's own (mean of per-type accuracies).
IN_METRICS_JSON = ("accuracy", "macro_f1", "auroc", "format_rate", "validity_rate")
CHUNK = 100  # bootstrap replicates per vectorised step: CHUNK × questions indices in memory


def columns(question_types: Sequence[str]) -> list[str]:
    """Table columns: ``accuracy/<type>`` in the project's type order, then ``SUMMARY``."""
    return [f"accuracy/{q}" for q in sorted(question_types, key=qtype_key)] + list(SUMMARY)


def question_arrays(rows: Sequence[Mapping[str, Any]], labels: Sequence[str] = CTRATE_LABELS) -> dict[str, Any]:
    """Prediction rows (``evaluation.metrics.prediction_row``) as arrays of length N (questions, sorted by id).

    ``cell`` is the detection outcome of a presence question about a label of ``labels`` (0 tp, 1 fp, 2 fn, 3 tn,
    as ``AbnormalityDetection`` counts it: anything but a "yes" is no detection), ``label`` its index (-1: none).
    """
    rows = sorted(rows, key=lambda r: str(r["id"]))
    types = sorted({str(r["question_type"]) for r in rows}, key=qtype_key)
    label, cell = np.full(len(rows), -1), np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        if r["question_type"] == "presence" and r.get("abnormality") in labels:
            truth = answer_text(r["truth"], r["options"]) == "yes"
            said_yes = answer_text(r["answer"], r["options"]) == "yes"
            label[i], cell[i] = labels.index(r["abnormality"]), 2 * (not said_yes) + (not truth)  # tp fp fn tn
    return {
        "types": types,
        "n_labels": len(labels),
        "qtype": np.array([types.index(str(r["question_type"])) for r in rows], dtype=np.int64),
        "correct": np.array([bool(r["correct"]) for r in rows], dtype=np.float64),
        "formatted": np.array([bool(r["formatted"]) for r in rows], dtype=np.float64),
        "valid": np.array([bool(r["valid"]) for r in rows], dtype=np.float64),
        "label": label,
        "cell": cell,
        "p_yes": np.array([math.nan if r.get("p_yes") is None else float(r["p_yes"]) for r in rows]),
    }


def _per_row(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / totals  # 0 / 0 → NaN: a rate of nothing


def statistics(a: Mapping[str, Any], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every column on each resample: ``idx`` (b, N) question indices → {column: (b,)} (NaN: undefined)."""
    b, n = idx.shape
    k, n_labels = len(a["types"]), a["n_labels"]
    key = (np.arange(b)[:, None] * k + a["qtype"][idx]).ravel()
    count = np.bincount(key, minlength=b * k).reshape(b, k)
    right = np.bincount(key, weights=a["correct"][idx].ravel(), minlength=b * k).reshape(b, k)
    per_type = _per_row(right, count)
    out = {f"accuracy/{q}": per_type[:, t] for t, q in enumerate(a["types"])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN (no type, no label): NaN is the answer
        out["average"] = np.nanmean(per_type, axis=1)
        lab, cell = a["label"][idx], a["cell"][idx]
        mine = lab >= 0
        flat = (np.arange(b)[:, None] * n_labels + lab) * 4 + cell
        tp, fp, fn, _ = np.bincount(flat[mine], minlength=b * n_labels * 4).reshape(b, n_labels, 4).transpose(2, 0, 1)
        out["macro_f1"] = np.nanmean(_per_row(2 * tp, 2 * tp + fp + fn), axis=1)  # labels seen as tp/fp/fn only
    out["accuracy"] = right.sum(axis=1) / n
    out["format_rate"] = a["formatted"][idx].mean(axis=1)
    out["validity_rate"] = a["valid"][idx].mean(axis=1)
    scored = ~np.isnan(a["p_yes"]) & (a["label"] >= 0)
    target = a["cell"] % 2 == 0  # tp or fn: the truth is "yes"
    aurocs = []
    for row in idx:
        pick = row[scored[row]]
        p, y = torch.tensor(a["p_yes"][pick], dtype=torch.float32), torch.tensor(target[pick], dtype=torch.long)
        aurocs.append(auroc_or_nan(p, y))  # torchmetrics' AUROC, as metrics.json's
    out["auroc"] = np.array(aurocs)
    return out


def bootstrap_table_row(
    rows: Sequence[Mapping[str, Any]], n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, dict[str, float]]:
    """{column: {"value", "low", "high"}}: the point estimate on all questions and its percentile bootstrap CI
    (``n_boot`` resamples of the questions with replacement, numpy generator seeded with ``seed``)."""
    a = question_arrays(rows)
    n = len(a["qtype"])
    if n == 0:
        raise ValueError("no prediction rows: nothing to tabulate")
    point = statistics(a, np.arange(n)[None, :])
    rng = np.random.default_rng(seed)
    reps: dict[str, list[np.ndarray]] = {key: [] for key in point}
    for start in range(0, n_boot, CHUNK):
        for key, values in statistics(a, rng.integers(0, n, size=(min(CHUNK, n_boot - start), n))).items():
            reps[key].append(values)
    out = {}
    for key in columns(a["types"]):
        low, high = percentile_interval(np.concatenate(reps[key]) if reps[key] else np.zeros(0), confidence)
        out[key] = {"value": float(point[key][0]), "low": low, "high": high}
    return out


def mismatches(row: Mapping[str, Mapping[str, float]], metrics: Mapping[str, Any], tol: float = 1e-6) -> list[str]:
    """Columns whose point estimate differs from the run's ``metrics.json`` (null there = NaN here agrees)."""
    out = []
    for key, stats in row.items():
        if not (key in IN_METRICS_JSON or key.startswith("accuracy/")) or key not in metrics:
            continue
        mine, theirs = stats["value"], math.nan if metrics[key] is None else float(metrics[key])
        if not (math.isnan(mine) and math.isnan(theirs)) and not abs(mine - theirs) <= tol:
            out.append(f"{key}: {mine:.6g} here, {theirs:.6g} in metrics.json")
    return out
