"""The CT-RATE 18-abnormality protocol's output: the challenge's submission files and the metrics, in the run folder.

``cli.py test --config configs/eval_18label.yaml`` asks every test volume about each of the 18 labels
(``datamodules/protocol_records.py``); ``CTRATEProtocolReport`` then writes, beside the usual run folder files
(``EvaluationReport``: metrics.json, predictions.jsonl, report.md, run.json, config.yaml):

    predictions_prob.csv   AccessionNo + the 18 labels: p(yes) per volume (one row per volume)
    predictions_bin.csv    the same layout, 0/1: p(yes) ≥ threshold (or the model's own yes/no answer)
    submission.json        {"predictions": [{"input_image_name", "probabilities": {label: p}}]}
    ctrate18_metrics.json  per-label and macro AUROC, F1, precision, recall, accuracy with bootstrap CIs
    ctrate18.md            the same as a table

Layout and names follow the VLM3D challenge, task 2 (forithmus/VLM3D-Dockers: the algorithm container writes
``predictions`` with ``input_image_name`` and ``probabilities``; the evaluation turns them into
``predictions_prob.csv`` / ``predictions_bin.csv`` keyed by ``AccessionNo``, the volume name without ``.nii.gz``,
with the 18 labels in CT-CLIP's order and a 0.5 threshold). Cells of a volume that was not asked every label (a
``max_samples`` cut) are left empty, and such a volume is left out of the metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np

from common.errors import ConfigError
from common.files import atomic_write_text, file_sha256
from datamodules.ctrate import CTRATE_LABELS
from datamodules.protocol_records import protocol_file
from evaluation.callbacks import EvaluationReport
from evaluation.ctrate_metrics import METRICS, protocol_metrics
from evaluation.formatting import fmt, json_safe, markdown_table
from rewards.parsing import answer_text

log = logging.getLogger(__name__)
NA = "n/a"


def volume_table(
    rows: Sequence[Mapping[str, Any]], labels: Sequence[str] = CTRATE_LABELS
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Presence prediction rows → (volume names sorted, p_yes, truth, said_yes), each array (V, L), NaN where the
    volume was not asked the label (``said_yes``: the parsed answer is "yes"; anything else is no detection)."""
    rows = [r for r in rows if r["question_type"] == "presence" and r.get("abnormality") in labels]
    names = sorted({str(r["volume_name"]) for r in rows})
    p, y, said = (np.full((len(names), len(labels)), np.nan) for _ in range(3))
    for r in rows:
        i, j = names.index(str(r["volume_name"])), labels.index(r["abnormality"])
        p[i, j] = np.nan if r.get("p_yes") is None else float(r["p_yes"])
        y[i, j] = float(answer_text(r["truth"], r["options"]) == "yes")
        said[i, j] = float(answer_text(r["answer"], r["options"]) == "yes")
    return names, p, y, said


def accession(volume_name: str) -> str:
    """The challenge's ``AccessionNo``: the volume's file name without ``.nii.gz``."""
    return volume_name.removesuffix(".gz").removesuffix(".nii")


def _csv(path: Path, names: Sequence[str], values: np.ndarray, labels: Sequence[str], integer: bool) -> None:
    def cell(v: float) -> str:
        return "" if np.isnan(v) else (str(int(v)) if integer else repr(float(v)))

    header = ",".join(["AccessionNo", *(f'"{lb}"' if "," in lb else lb for lb in labels)])
    lines = [",".join([accession(n), *(cell(v) for v in row)]) for n, row in zip(names, values, strict=True)]
    atomic_write_text(path, "\n".join([header, *lines]) + "\n")


def _ci(m: Mapping[str, float]) -> str:
    value = fmt(m["value"])
    return NA if value == fmt(None) else f"{value} [{fmt(m['low'])}, {fmt(m['high'])}]"


def render_table(metrics: Mapping[str, Any]) -> str:
    """Markdown: one row per label (positives / volumes, each metric with its CI, "n/a" if undefined), then macro."""
    n = metrics["volumes"]
    header = ["label", "positives", "AUROC", "F1", "precision", "recall", "accuracy"]
    rows = [
        [label, f"{e['positives']}/{n}", *(_ci(e[m]) for m in METRICS)] for label, e in metrics["per_label"].items()
    ]
    macro = metrics["macro"]
    rows.append(["**macro**", "", *(f"{_ci(macro[m])} ({macro[m]['labels']} labels)" for m in METRICS)])
    conf = round(100 * metrics["confidence"])
    intro = (
        f"CT-RATE 18-abnormality protocol: {n} volumes, {conf} % percentile-bootstrap CIs over volumes "
        f"({metrics['n_boot']} resamples); {NA}: the label has no positives (AUROC: or no negatives) in this split."
    )
    return "\n".join(["# CT-RATE 18-abnormality protocol", "", intro, "", *markdown_table(header, rows)]) + "\n"


def write_protocol(
    run_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    threshold: float = 0.5,
    binary: Literal["p_yes", "answer"] = "p_yes",
    n_boot: int = 1000,
    seed: int = 0,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the submission files and the metrics (module docstring) into ``run_dir``; returns the metrics, with
    ``provenance`` (e.g. the questions file and its SHA-256) added to them."""
    run_dir, labels = Path(run_dir), list(CTRATE_LABELS)
    names, p, y, said = volume_table(rows, labels)
    predicted = np.where(np.isnan(p), np.nan, p >= threshold) if binary == "p_yes" else said
    _csv(run_dir / "predictions_prob.csv", names, p, labels, integer=False)
    _csv(run_dir / "predictions_bin.csv", names, predicted, labels, integer=True)
    submission = {
        "name": "Generated probabilities",
        "type": "Abnormality Classification",
        "version": {"major": 1, "minor": 0},
        "predictions": [
            {"input_image_name": accession(n), "probabilities": dict(zip(labels, row.tolist(), strict=True))}
            for n, row in zip(names, p, strict=True)
        ],
    }
    atomic_write_text(run_dir / "submission.json", json.dumps(json_safe(submission), indent=1) + "\n")
    complete = ~np.isnan(p).any(axis=1) & ~np.isnan(predicted).any(axis=1)
    if not complete.all():
        log.warning("%d of %d volumes were not asked every label: left out of the metrics", (~complete).sum(), len(p))
    metrics = protocol_metrics(p[complete], y[complete], predicted[complete], labels, n_boot, seed)
    metrics.update(threshold=threshold, binary=binary, **(provenance or {}))
    atomic_write_text(run_dir / "ctrate18_metrics.json", json.dumps(json_safe(metrics), indent=2) + "\n")
    atomic_write_text(run_dir / "ctrate18.md", render_table(metrics))
    return metrics


class CTRATEProtocolReport(EvaluationReport):
    """``EvaluationReport`` plus the CT-RATE 18-abnormality protocol's files (module docstring), after ``test``.

    Args:
        out_dir, name, overwrite: as ``EvaluationReport``'s; keep ``out_dir`` apart from the usual evaluations'
            (``runs/eval_18label``), whose run folders hold other questions.
        threshold: p(yes) at or above which a label counts as present (the challenge's 0.5).
        binary: ``p_yes`` (threshold p(yes), as the challenge does with submitted probabilities) or ``answer``
            (the model's own greedy yes/no; an invalid answer is "no").
        n_boot: bootstrap resamples of the volumes for the CIs; seed: their generator's seed.
    """

    def __init__(
        self,
        out_dir: str = "runs/eval_18label",
        name: str | None = None,
        overwrite: bool = False,
        threshold: float = 0.5,
        binary: Literal["p_yes", "answer"] = "p_yes",
        n_boot: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(out_dir, name, overwrite)
        self.threshold, self.binary, self.n_boot, self.seed = threshold, binary, n_boot, seed

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse a test split that is not the protocol's questions, before any work."""
        if dict(getattr(trainer.datamodule, "hparams", {})).get("protocol") != "ctrate_18":
            raise ConfigError(
                "CTRATEProtocolReport scores the 18-label protocol: set data.init_args.protocol ctrate_18"
            )
        super().on_test_start(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        results = getattr(pl_module, "test_results", None)
        if not trainer.is_global_zero or results is None or trainer.fast_dev_run:
            return
        run_dir = self.out_dir / self._name(trainer, pl_module)
        data = dict(trainer.datamodule.hparams)
        questions = protocol_file(data.get("vqa_dir") or Path(data["data_dir"]) / "vqa", "valid")
        provenance = {"questions_file": str(questions), "questions_sha256": file_sha256(questions)}
        rows = results["predictions"]
        metrics = write_protocol(run_dir, rows, self.threshold, self.binary, self.n_boot, self.seed, provenance)
        macro = metrics["macro"]
        print(f"CT-RATE 18-label protocol: macro AUROC {fmt(macro['auroc']['value'])}, F1 {fmt(macro['f1']['value'])}")
        print(f"  {run_dir / 'ctrate18.md'}, {run_dir / 'predictions_prob.csv'}")
