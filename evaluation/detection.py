"""Abnormality detection from the presence questions, as a torchmetric: precision, recall and F1 per label from
the parsed answers; AUROC, AUPRC and calibration from ``p_yes``, the model's probability of "yes". Counts are sums
and probabilities concatenations, so the numbers are exact across batches and devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_calibration_error
from torchmetrics.utilities import dim_zero_cat

from evaluation.metrics import rate
from rewards.parsing import answer_text

CALIBRATION_BINS = 10


class AbnormalityDetection(Metric):
    """Per-abnormality detection from the presence questions ("Is there <label> …?" yes/no).

    Precision / recall / F1 count the parsed answer ("yes" = detected; anything else, including no valid
    answer, = not detected, so invalid answers cost recall, and the validity rate reports them). Macro F1
    averages the labels that occur (as truth or prediction); micro F1 pools their counts. AUROC, AUPRC and
    calibration use ``p_yes``, the model's probability of "yes" at the answer position, where it was computed.
    """

    full_state_update = False

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__()
        self.labels = list(labels)
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, default=torch.zeros(len(self.labels), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("p_yes", "target", "label_index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, rows: Sequence[Mapping[str, Any]]) -> None:
        probs, targets, indices = [], [], []
        for row in rows:
            if row["padding"] or row["question_type"] != "presence" or row.get("abnormality") not in self.labels:
                continue
            i = self.labels.index(row["abnormality"])
            # As the options they denote, so "A" among ["A. Yes", "B. No"] is a yes, and an empty answer is none.
            options = row["options"]
            truth, said_yes = answer_text(row["truth"], options) == "yes", answer_text(row["answer"], options) == "yes"
            state = {(True, True): self.tp, (False, True): self.fp, (True, False): self.fn, (False, False): self.tn}
            state[(truth, said_yes)][i] += 1
            if row.get("p_yes") is not None:
                probs.append(float(row["p_yes"]))
                targets.append(int(truth))
                indices.append(i)
        if probs:
            # All in the metric's float dtype: a rank with nothing to add syncs an empty tensor of that dtype,
            # and the gather needs one dtype on every rank (labels and indices are exact in float32).
            for state, values in ((self.p_yes, probs), (self.target, targets), (self.label_index, indices)):
                state.append(torch.tensor(values, dtype=self.dtype, device=self.tp.device))

    def compute(self) -> dict[str, Any]:
        tp, fp, fn = self.tp, self.fp, self.fn
        per_label: dict[str, dict[str, float]] = {}
        f1s = []
        probs = _cat(self.p_yes, torch.float32)
        target, index = _cat(self.target, torch.long), _cat(self.label_index, torch.long)
        for i, label in enumerate(self.labels):
            if tp[i] + fp[i] + fn[i] + self.tn[i] == 0:
                continue
            f1 = rate(2 * tp[i], 2 * tp[i] + fp[i] + fn[i])
            if not math.isnan(f1):
                f1s.append(f1)
            mine = index == i
            per_label[label] = {
                "precision": rate(tp[i], tp[i] + fp[i]),
                "recall": rate(tp[i], tp[i] + fn[i]),
                "f1": f1,
                "support": int(tp[i] + fn[i]),
                "auroc": auroc_or_nan(probs[mine], target[mine]),
                "auprc": _auprc(probs[mine], target[mine]),
            }
        return {
            # Flat copies so run comparisons (which average flat numbers over seeds) can show single findings.
            **{f"f1/{label}": stats["f1"] for label, stats in per_label.items()},
            "macro_f1": sum(f1s) / len(f1s) if f1s else float("nan"),
            "micro_f1": rate(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
            "auroc": auroc_or_nan(probs, target),
            "auprc": _auprc(probs, target),
            "ece": float(binary_calibration_error(probs, target, n_bins=CALIBRATION_BINS)) if len(probs) else math.nan,
            "per_abnormality": per_label,
            "calibration": calibration_bins(probs, target),
        }


def _cat(state: list[torch.Tensor] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A "cat" state as one tensor: a list of batches on one process, already one tensor after a sync."""
    if isinstance(state, torch.Tensor):
        return state.to(dtype).cpu()
    return dim_zero_cat(state).to(dtype).cpu() if state else torch.zeros(0, dtype=dtype)


def _both_classes(target: torch.Tensor) -> bool:
    return bool(len(target)) and 0 < int(target.sum()) < len(target)


def auroc_or_nan(probs: torch.Tensor, target: torch.Tensor) -> float:
    """AUROC, or NaN when one class is absent (torchmetrics would warn and return 0)."""
    return float(binary_auroc(probs, target)) if _both_classes(target) else float("nan")


def _auprc(probs: torch.Tensor, target: torch.Tensor) -> float:
    return float(binary_average_precision(probs, target)) if _both_classes(target) else float("nan")


def calibration_bins(probs: torch.Tensor, target: torch.Tensor, n_bins: int = CALIBRATION_BINS) -> dict[str, list]:
    """Reliability-diagram bins of p(yes): mean confidence and fraction of true "yes" per equal-width bin."""
    edges = torch.linspace(0, 1, n_bins + 1)
    which = torch.clamp(torch.bucketize(probs, edges[1:-1], right=True), max=n_bins - 1)
    count = torch.bincount(which, minlength=n_bins).double()
    conf = torch.bincount(which, weights=probs.double(), minlength=n_bins)
    pos = torch.bincount(which, weights=target.double(), minlength=n_bins)
    nan = torch.full_like(count, float("nan"))
    return {
        "bin_edges": edges.tolist(),
        "mean_confidence": torch.where(count > 0, conf / count.clamp(min=1), nan).tolist(),
        "fraction_positive": torch.where(count > 0, pos / count.clamp(min=1), nan).tolist(),
        "count": [int(c) for c in count.tolist()],
    }
