"""An evaluation run folder: everything needed to read, plot and reproduce one evaluation.

    <run>/metrics.json       every metric (NaN → null)
    <run>/predictions.jsonl  one scored row per question
    <run>/report.md          the report a person reads, with the plots and cases below
    <run>/report.html        the cases with their images beside question, reasoning, answer and truth, and the plots
    <run>/plots/*.png        per-abnormality F1, confusion matrices per question type, calibration of p(yes)
    <run>/cases/<id>.png     the image the model was given for each case the reports show (evaluation/case_images.py)
    <run>/run.json           what was evaluated, on which data (file hashes, sample ids hash), with which seeds
    <run>/config.yaml        the exact LightningCLI config of the run (when launched from the CLI)

Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from evaluation.case_images import Renderer, pick_cases, write_case_images
from evaluation.formatting import json_safe
from evaluation.plots import plot_abnormality_f1, plot_calibration, plot_confusion_matrices
from evaluation.report import render_report
from evaluation.report_html import render_html

ROW_KEYS_DROPPED = ("padding",)


def ids_sha256(ids: Sequence[str]) -> str:
    """Digest of the sorted sample ids: two runs evaluated the same questions iff these match."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def write_run(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any],
    config_yaml: str | None = None,
    render: Renderer | None = None,
    cases_per_type: int = 2,
    case_seed: int = 0,
) -> Path:
    """Write the run folder (see the module docstring); returns the path of ``report.md``.

    ``render`` gives the image of a prediction row (``evaluation.callbacks.dataset_renderer``): the reports show
    ``cases_per_type`` wrong and right answers of each question type, drawn with ``case_seed``, with their images
    when ``render`` is given.
    """
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in row.items() if k not in ROW_KEYS_DROPPED} for row in predictions]
    info = {**info, "num_samples": len(rows), "sample_ids_sha256": ids_sha256([r["id"] for r in rows])}
    atomic_write_text(run_dir / "metrics.json", json.dumps(json_safe(dict(metrics)), indent=2) + "\n")
    atomic_write_text(run_dir / "run.json", json.dumps(json_safe(info), indent=2) + "\n")
    atomic_write_text(
        run_dir / "predictions.jsonl", "".join(json.dumps(json_safe(r), ensure_ascii=False) + "\n" for r in rows)
    )
    if config_yaml is not None:
        atomic_write_text(run_dir / "config.yaml", config_yaml)
    plots = {
        "abnormality_f1": plot_abnormality_f1(metrics.get("per_abnormality", {}), run_dir / "plots/abnormality_f1.png"),
        "confusion": plot_confusion_matrices(rows, run_dir / "plots/confusion.png"),
    }
    if "calibration" in metrics:
        plots["calibration"] = plot_calibration(
            metrics["calibration"], run_dir / "plots/calibration.png", ece=metrics.get("ece")
        )
    relative = {name: Path(path).relative_to(run_dir).as_posix() for name, path in plots.items()}
    cases = pick_cases(rows, cases_per_type, case_seed)
    images = write_case_images(run_dir, cases, render)
    atomic_write_text(run_dir / "report.html", render_html(info, metrics, cases, images, relative))
    report = run_dir / "report.md"
    atomic_write_text(report, render_report(dict(metrics), rows, dict(info), relative, cases=cases, images=images))
    return report
