"""The visual-reliance audit (evaluation/audit.py, audit_report.py) end to end on the tiny model: every condition,
the tables with CIs and paired differences, the figure, and a report whose every linked image exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.audit import CONDITIONS, audit, image_condition
from evaluation.audit_report import pick_cases

ROOT = Path(__file__).resolve().parents[2]


def in_this_process(args: list[str], log_path: Path) -> int:
    """cli.py in the test's own process (a process per condition would spend most of a minute importing)."""
    from cli import run

    return run(args)


def linked_images(report: Path) -> list[Path]:
    return [report.parent / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())]


def test_every_condition_end_to_end(tmp_path, synthetic_root, tiny_model_dir, monkeypatch):
    from lightning_modules.roi_classifier import ROIClassifierModule

    # Away from the checkout, a path that only resolves against its artifacts/ (a default the run did not use) fails.
    monkeypatch.chdir(tmp_path)

    classifier = ROIClassifierModule(backbone="test_resnet", image_size=32)  # untrained: its boxes are what matter
    cam = tmp_path / "cam.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams),
                "pytorch-lightning_version": L.__version__}, cam)  # fmt: skip
    extra = ["--model.init_args.model_path", str(tiny_model_dir), "--model.init_args.max_new_tokens", "4",
             "--data.data_dir", str(synthetic_root), "--data.max_samples", "5", "--data.num_workers", "0"]  # fmt: skip
    out = tmp_path / "audit"
    configs = [str(ROOT / "configs" / "eval.yaml")]
    report, problems = audit(
        configs, extra, out, list(CONDITIONS), str(cam), n_boot=50, n_cases=2, runner=in_this_process
    )
    assert problems == []
    table = json.loads((out / "table.json").read_text())
    rows = {r["condition"]: r for r in table["rows"]}
    assert list(rows) == list(CONDITIONS) and {r["status"] for r in rows.values()} == {"ok"}
    assert len({r["sample_ids_sha256"] for r in rows.values()}) == 1 and {r["n"] for r in rows.values()} == {5}
    for name, row in rows.items():
        paired = row["paired_vs_original"]["all"]
        assert paired["n_questions"] == 5 and paired["accuracy_b"] == pytest.approx(row["metrics"]["accuracy"]["value"])
        assert (
            row["metrics"]["accuracy"]["low"]
            <= row["metrics"]["accuracy"]["value"]
            <= row["metrics"]["accuracy"]["high"]
        )
        if name == "original":
            assert paired["difference"] == 0 and paired["p_value"] == 1
    assert sum(rows["wrong_region"]["images"].values()) == 5 and sum(rows["shuffled"]["images"].values()) == 5
    assert set(rows["box_cam"]["images"]) <= {"proposed", "lesion box kept"}
    text = (out / "table.md").read_text()
    assert all(f"## {name}:" in text for name in CONDITIONS) and "Δ vs original" in text
    assert (out / "accuracy.png").is_file()

    images = linked_images(report)
    assert len(images) == 1 + 2 * len(CONDITIONS)  # the figure, then 2 cases × every condition
    assert all(path.is_file() for path in images)
    case = sorted((out / "images").glob("*/*.png"))[0].name
    blank = np.asarray(Image.open(out / "images" / "blank" / case))
    original = np.asarray(Image.open(out / "images" / "original" / case))
    assert blank.shape == original.shape and (blank == blank.flat[0]).all() and not (original == original.flat[0]).all()

    # Run again: every condition is found done and skipped, and the outputs are the same.
    audit(configs, extra, out, ["original", "blank"], str(cam), n_boot=50, n_cases=2, runner=None)  # type: ignore[arg-type]
    assert json.loads((out / "table.json").read_text())["rows"][1]["metrics"] == rows["blank"]["metrics"]


def test_conditions_and_cases():
    assert image_condition("original", 0, None) is None
    assert image_condition("shuffled", 3, None) == {"name": "shuffled", "seed": 3}
    assert image_condition("box_cam", 0, "c.ckpt")["roi_source"]["init_args"]["checkpoint"] == "c.ckpt"
    with pytest.raises(ValueError, match="cam_checkpoint"):
        image_condition("box_cam", 0, None)
    types = ["presence"] * 3 + ["location"] * 2 + ["abnormality"]
    rows = [{"id": f"q{i}", "question_type": t, "correct": i in (1, 4)} for i, t in enumerate(types)]
    assert pick_cases(rows, 4) == ["q1", "q5", "q4", "q0"]  # presence, abnormality, location; right answers first
