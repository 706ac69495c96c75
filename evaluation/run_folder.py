"""An evaluation run folder: everything needed to read, plot and reproduce one evaluation.

    <run>/metrics.json       every metric (NaN → null)
    <run>/predictions.jsonl  one scored row per question
    <run>/report.md          the report a person reads, with the plots below
    <run>/plots/*.png        per-abnormality F1, confusion matrices per question type, calibration of p(yes)
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
from evaluation.formatting import json_safe
from evaluation.plots import plot_abnormality_f1, plot_calibration, plot_confusion_matrices
from evaluation.report import render_report

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
) -> Path:
    """Write the run folder (see the module docstring); returns the path of ``report.md``."""
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
    relative = {name: str(Path(path).relative_to(run_dir)) for name, path in plots.items()}
    report = run_dir / "report.md"
    atomic_write_text(report, render_report(dict(metrics), rows, dict(info), relative))
    return report
