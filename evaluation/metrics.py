"""CT-VQA diagnosis metrics as torchmetrics: states are sums or concatenations, so they are exact across
batches and devices.

Every metric here updates from *prediction rows* (``prediction_row``): one dict per answered question, the
same dicts that go to ``predictions.jsonl``, so a number in a report can be recomputed from that file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_calibration_error
from torchmetrics.text import BLEUScore, ROUGEScore
from torchmetrics.utilities import dim_zero_cat

from rewards.format import format_reward
from rewards.parsing import answer_text, extract_answer, is_correct, match_option
from rewards.validity import validity_reward

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
CALIBRATION_BINS = 10


def prediction_row(completion: str, meta: Mapping[str, Any], p_yes: float | None = None) -> dict[str, Any]:
    """One question's outcome: the question, the model's reasoning and answer, the truth, and how it scored.

    ``answer`` is the option the model chose (or its raw answer text when that is no option, None without an
    ``<answer>``) and ``truth`` the option the gold answer denotes, both as the option is written, so a gold "B"
    and a model's "Emphysema" both read "B. Emphysema" (plots and reports compare them as text);
    ``valid`` is ``rewards.validity``'s verdict and ``formatted`` ``rewards.format``'s.
    """
    options = list(meta["options"])
    raw = extract_answer(completion)
    think = _THINK_RE.search(completion)
    prompt_format = meta.get("prompt_format", "think")
    return {
        "id": meta["id"],
        "volume_name": meta.get("volume_name"),
        "question_type": meta["question_type"],
        "question": meta["question"],
        "options": options,
        "truth": (match_option(meta["answer"], options) or meta["answer"]) if options else meta["answer"],
        "completion": completion,
        "reasoning": think.group(1).strip() if think else None,
        "reference_reasoning": meta.get("reasoning"),
        "answer": (match_option(raw, options) or raw) if options else raw,
        "correct": is_correct(completion, meta["answer"], options),
        "formatted": format_reward([completion], [prompt_format])[0] == 1.0,
        "valid": validity_reward([completion], [options], [meta["question_type"]])[0] == 1.0,
        "abnormality": meta.get("abnormality"),
        "p_yes": p_yes,
        "padding": bool(meta.get("padding", False)),
    }


def _rate(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num / den) if den > 0 else float("nan")


class VQAAccuracy(Metric):
    """Exact-match accuracy overall and per question type, with chance, format and validity rates.

    Chance is 1 / number of options, averaged over the questions seen: the bar a model that ignores the
    image (and the question's prior) would reach. Padding rows (repeats that even out a distributed split)
    are skipped.
    """

    full_state_update = False

    def __init__(self, question_types: Sequence[str]) -> None:
        super().__init__()
        self.question_types = list(question_types)
        n = len(self.question_types)
        for name in ("correct", "chance", "count", "formatted", "valid"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            if row["padding"]:
                continue
            t = self.question_types.index(row["question_type"])
            self.count[t] += 1
            self.correct[t] += float(row["correct"])
            self.chance[t] += 1.0 / max(1, len(row["options"]))
            self.formatted[t] += float(row["formatted"])
            self.valid[t] += float(row["valid"])

    def compute(self) -> dict[str, float]:
        total = self.count.sum()
        results = {
            "accuracy": _rate(self.correct.sum(), total),
            "chance": _rate(self.chance.sum(), total),
            "format_rate": _rate(self.formatted.sum(), total),
            "validity_rate": _rate(self.valid.sum(), total),
        }
        for t, name in enumerate(self.question_types):
            if self.count[t] > 0:
                results[f"accuracy/{name}"] = _rate(self.correct[t], self.count[t])
                results[f"chance/{name}"] = _rate(self.chance[t], self.count[t])
                results[f"n/{name}"] = float(self.count[t])
        return results


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
            f1 = _rate(2 * tp[i], 2 * tp[i] + fp[i] + fn[i])
            if not math.isnan(f1):
                f1s.append(f1)
            mine = index == i
            per_label[label] = {
                "precision": _rate(tp[i], tp[i] + fp[i]),
                "recall": _rate(tp[i], tp[i] + fn[i]),
                "f1": f1,
                "support": int(tp[i] + fn[i]),
                "auroc": auroc_or_nan(probs[mine], target[mine]),
                "auprc": _auprc(probs[mine], target[mine]),
            }
        return {
            # Flat copies so run comparisons (which average flat numbers over seeds) can show single findings.
            **{f"f1/{label}": stats["f1"] for label, stats in per_label.items()},
            "macro_f1": sum(f1s) / len(f1s) if f1s else float("nan"),
            "micro_f1": _rate(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()),
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


class ReasoningOverlap(Metric):
    """BLEU-4 and ROUGE-L (F) of the free text against the reference: the reasoning of think answers, and the
    answer itself for open questions (no options). NaN when there is no free text to compare."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.reasoning_bleu, self.reasoning_rouge = BLEUScore(n_gram=4, smooth=True), ROUGEScore(rouge_keys="rougeL")
        self.answer_bleu, self.answer_rouge = BLEUScore(n_gram=4, smooth=True), ROUGEScore(rouge_keys="rougeL")
        self.add_state("n_reasoning", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_answer", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rows: Sequence[Mapping[str, Any]]) -> None:
        pairs = [(r["reasoning"] or "", r["reference_reasoning"]) for r in rows if self._has_reasoning(r)]
        if pairs:
            preds, refs = zip(*pairs, strict=True)
            self.reasoning_bleu.update(list(preds), [[r] for r in refs])
            self.reasoning_rouge.update(list(preds), list(refs))
            self.n_reasoning += len(pairs)
        open_rows = [r for r in rows if not r["padding"] and not r["options"]]
        if open_rows:
            preds = [r["answer"] or "" for r in open_rows]
            self.answer_bleu.update(preds, [[r["truth"]] for r in open_rows])
            self.answer_rouge.update(preds, [r["truth"] for r in open_rows])
            self.n_answer += len(open_rows)

    def reset(self) -> None:
        super().reset()  # resets this metric's own states only, not the metrics it holds
        for metric in (self.reasoning_bleu, self.reasoning_rouge, self.answer_bleu, self.answer_rouge):
            metric.reset()

    @staticmethod
    def _has_reasoning(row: Mapping[str, Any]) -> bool:
        return not row["padding"] and bool(row.get("reference_reasoning")) and "<think>" in row["completion"].lower()

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        out = {"bleu": nan, "rouge_l": nan, "open_answer/bleu": nan, "open_answer/rouge_l": nan}
        if self.n_reasoning > 0:
            out["bleu"] = float(self.reasoning_bleu.compute())
            out["rouge_l"] = float(self.reasoning_rouge.compute()["rougeL_fmeasure"])
        if self.n_answer > 0:
            out["open_answer/bleu"] = float(self.answer_bleu.compute())
            out["open_answer/rouge_l"] = float(self.answer_rouge.compute()["rougeL_fmeasure"])
        return out


class DiagnosisMetrics(torch.nn.Module):
    """All test-time metrics together: ``update(rows)``, ``compute()`` → one dict for metrics.json, ``reset()``."""

    def __init__(self, question_types: Sequence[str], labels: Sequence[str]) -> None:
        super().__init__()
        self.accuracy = VQAAccuracy(question_types)
        self.detection = AbnormalityDetection(labels)
        self.text = ReasoningOverlap()

    def update(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for metric in (self.accuracy, self.detection, self.text):
            metric.update(rows)

    def compute(self) -> dict[str, Any]:
        return {**self.accuracy.compute(), **self.detection.compute(), **self.text.compute()}

    def reset(self) -> None:
        for metric in (self.accuracy, self.detection, self.text):
            metric.reset()
