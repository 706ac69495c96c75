"""CT-VQA answer metrics as torchmetrics: accuracy (with chance, format and validity rates) and the overlap of
free text with its reference. States are sums, so they are exact across batches and devices.

Every metric here, and in ``evaluation.detection`` and ``evaluation.diagnosis``, updates from *prediction rows*
(``prediction_row``): one dict per answered question, the same dicts that go to ``predictions.jsonl``, so a
number in a report can be recomputed from that file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.text import BLEUScore, ROUGEScore

from rewards.format import format_reward
from rewards.parsing import extract_answer, is_correct, match_option
from rewards.validity import validity_reward

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


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


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``values`` (replicates of one statistic): the (1 - confidence) / 2 and
    (1 + confidence) / 2 quantiles of the defined ones. A replicate that is NaN (a resample in which the statistic
    is undefined, e.g. AUROC with one class left) is left out; with none defined, (NaN, NaN)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def rate(num: torch.Tensor, den: torch.Tensor) -> float:
    """``num / den`` as a float, NaN when ``den`` is 0 (a rate of nothing)."""
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
            "accuracy": rate(self.correct.sum(), total),
            "chance": rate(self.chance.sum(), total),
            "format_rate": rate(self.formatted.sum(), total),
            "validity_rate": rate(self.valid.sum(), total),
        }
        for t, name in enumerate(self.question_types):
            if self.count[t] > 0:
                results[f"accuracy/{name}"] = rate(self.correct[t], self.count[t])
                results[f"chance/{name}"] = rate(self.chance[t], self.count[t])
                results[f"n/{name}"] = float(self.count[t])
        return results


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
