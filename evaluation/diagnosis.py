"""Every test-time metric of a CT-VQA run in one module: accuracy, abnormality detection and text overlap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from evaluation.detection import AbnormalityDetection
from evaluation.metrics import ReasoningOverlap, VQAAccuracy


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
