"""`cli.py ask` on a user's own NIfTI: an answer, and the zoom-embedded image the model saw, saved."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from PIL import Image

from cli import main

EVAL = str(Path(__file__).resolve().parents[2] / "configs" / "eval.yaml")


def write_ct(path: Path) -> np.ndarray:
    """A chest-like HU volume stored as RAS NIfTI (what dcm2niix writes): body, two lungs, one nodule."""
    from datamodules.synthetic_ctrate import make_phantom

    phantom = make_phantom(np.random.default_rng(3), findings=False)
    hu = phantom.hu.copy()  # (X, Y, Z) in LPS
    hu[50:54, 60:64, 10:12] = 40.0
    ras = hu[::-1, ::-1, :]  # L→R and P→A flips: the same voxels in RAS index order
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ras), np.diag([2.5, 2.5, 5.0, 1.0])), path)
    return hu


def test_ask_answers_and_saves_the_image(tmp_path, synthetic_root, tiny_model_dir):
    volume = tmp_path / "my_ct.nii.gz"
    write_ct(volume)
    mask = np.zeros((128, 128, 32), np.uint8)
    mask[50:54, 60:64, 10:12] = 1
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(mask[::-1, ::-1, :]), np.diag([2.5, 2.5, 5.0, 1.0])),
        tmp_path / "roi.nii.gz",
    )
    overlay = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 8}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "image_size": 56},
    }
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overlay))
    out = tmp_path / "ask"
    common = ["ask", "--config", EVAL, "--config", str(tmp_path / "o.yaml"), "--volume", str(volume)]
    main(
        [
            *common,
            "--question",
            "Is there a lung nodule?",
            "--options",
            '["yes", "no"]',
            "--roi_mask",
            str(tmp_path / "roi.nii.gz"),
            "--out_dir",
            str(out),
        ]
    )
    answer = json.loads((out / "answer.json").read_text())
    assert answer["slice_index"] in (10, 11)  # the mask's fullest slice
    assert answer["roi"] == [[50, 60, 54, 64]]  # display x = LPS i, y = LPS j
    assert isinstance(answer["completion"], str) and answer["options"] == ["yes", "no"]
    with Image.open(out / "image.png") as image:
        assert max(image.size) == 56 and image.mode == "RGB"

    main(
        [
            *common,
            "--question",
            "Where is the nodule?",
            "--roi",
            "[40, 50, 70, 80]",
            "--slice_index",
            "5",
            "--out_dir",
            str(out),
        ]
    )
    answer = json.loads((out / "answer.json").read_text())
    assert answer["slice_index"] == 5 and answer["roi"] == [[40, 50, 70, 80]] and answer["options"] == []


def ask_with_anatomy_source(tmp_path, synthetic_root, tiny_model_dir, args: list[str], **data) -> tuple:
    """``cli.py ask`` on a phantom volume with ``AnatomyROI`` as the data's ROI source (and ``data`` on top):
    (the volume's HU, answer.json, the output folder)."""
    volume = tmp_path / "my_ct.nii.gz"
    hu = write_ct(volume)
    source = {"class_path": "datamodules.roi_sources.AnatomyROI"}
    overlay = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 4}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "image_size": 56, "roi_source": source, **data},
    }
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overlay))
    out = tmp_path / "ask"
    main(["ask", "--config", EVAL, "--config", str(tmp_path / "o.yaml"), "--volume", str(volume), *args,
          "--abnormality", "Lung nodule", "--out_dir", str(out)])  # fmt: skip
    return hu, json.loads((out / "answer.json").read_text()), out


def test_ask_lets_the_roi_source_choose_where_to_zoom(tmp_path, synthetic_root, tiny_model_dir):
    from datamodules.anatomy_masks import anatomy_masks
    from datamodules.roi_sources import region_proposals

    question = "Is there a lung nodule in the right lower lobe?"
    hu, answer, _ = ask_with_anatomy_source(tmp_path, synthetic_root, tiny_model_dir, ["--question", question])
    expected = region_proposals(anatomy_masks(hu)["right lower lobe"], "anatomy", "right lower lobe")[0]
    assert answer["roi_source"] == "anatomy"
    assert (answer["slice_index"], answer["roi"]) == (expected.slice_index, expected.boxes)
    assert answer["roi"][0][2] <= 64  # patient's right = image left


def test_ask_shows_the_sources_candidate_views_on_a_volume_without_masks(tmp_path, synthetic_root, tiny_model_dir):
    from datamodules.anatomy_masks import anatomy_masks
    from datamodules.roi_sources import region_proposals
    from datamodules.views import spaced

    args = ["--question", "Is there a lung nodule?", "--options", '["yes", "no"]']
    views = {"k": 3, "min_distance_mm": 20, "slab_mm": 10}
    hu, answer, out = ask_with_anatomy_source(tmp_path, synthetic_root, tiny_model_dir, args, views=views)
    # As the VQA builder chooses them: the source's own view, then its candidates, 20 mm (4 slices of 5 mm) apart.
    lungs = anatomy_masks(hu)["lungs"]
    candidates = [region_proposals(lungs, "anatomy", "lungs")[0], *region_proposals(lungs, "anatomy", "lungs", 4, 4)]
    expected = spaced([(p.slice_index, p.boxes) for p in candidates], 3, 4)
    assert [(v["slice_index"], v["roi"]) for v in answer["views"]] == sorted(expected)
    assert all(v["slab_mm"] == 10.0 and v["projection"] == "max" and v["shows_lesion"] is None for v in answer["views"])
    assert Image.open(out / "image.png").size == (3 * 56, 56)  # the three views side by side
