"""ROI classifier: slice bags, class activation maps, and fit → checkpoint → propose through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli import main
from datamodules.ct_slices import CTSliceDataModule, slice_positions
from datamodules.ctrate import CTRATE_LABELS, CTRATEPaths, load_ct_volume, patient_id, read_split
from lightning_modules.roi_classifier import ROIClassifierModule, box_from_map, pool_slices

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "roi_classifier.yaml")
TINY = "test_resnet"  # timm's tiny ResNet (0.4 M parameters): GAP + linear head, fast at 32-64 px on CPU


def test_slice_bags_and_patient_split(synthetic_root):
    data = CTSliceDataModule(data_dir=str(synthetic_root), image_size=32, slices_per_volume=4, batch_size=2)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 4, 1, 32, 32)
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert batch["target"].shape == (2, 18) and set(batch["target"].unique().tolist()) <= {0.0, 1.0}
    assert len(batch["volume_name"]) == 2

    train, val = (set(data.datasets[s].rows["VolumeName"]) for s in ("train", "val"))
    assert train and val and not {patient_id(n) for n in train} & {patient_id(n) for n in val}
    assert train | val == set(read_split(synthetic_root, "train")["VolumeName"])
    row = read_split(synthetic_root, "train").set_index("VolumeName").loc[batch["volume_name"][0]]
    assert batch["target"][0].tolist() == row[list(CTRATE_LABELS)].astype(float).tolist()

    # Validation bags are fixed; training bags jitter inside their bins.
    first, again = (next(iter(data.val_dataloader()))["image"] for _ in range(2))
    assert torch.equal(first, again)
    assert slice_positions(32, 4) == [4, 12, 20, 28]
    jittered = [slice_positions(32, 4, torch.Generator().manual_seed(s)) for s in range(5)]
    assert all(8 * i <= k < 8 * (i + 1) for ks in jittered for i, k in enumerate(ks))
    assert len({tuple(ks) for ks in jittered}) > 1
    assert slice_positions(3, 8) == sorted(slice_positions(3, 8)) and max(slice_positions(3, 8)) == 2

    rgb = CTSliceDataModule(data_dir=str(synthetic_root), windows=["lung", "mediastinal", "bone"], image_size=32)
    rgb.setup("fit")
    assert rgb.datasets["val"][0]["image"].shape == (8, 3, 32, 32)


def test_cam_mean_is_the_slice_logit():
    torch.manual_seed(0)
    module = ROIClassifierModule(backbone=TINY, image_size=64).eval()
    images = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        cams = module.class_activation_maps(images)
        logits = module.model(images)
    assert cams.shape[:2] == (3, 18) and cams.shape[2:] == (2, 2)
    torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, atol=1e-5, rtol=1e-5)


def test_pooling_and_box_from_map():
    x = torch.tensor([[[0.0], [1.0], [4.0]]])  # (B=1, S=3, L=1)
    mean, top, lse = (pool_slices(x, p).item() for p in ("mean", "max", "lse"))
    assert mean < lse < top and pool_slices(x, "lse", lse_r=100.0).item() == pytest.approx(top, abs=0.02)

    cam = np.zeros((10, 12))
    cam[2:5, 3:7] = 1.0  # the peak's region
    cam[3, 4] = 2.0
    cam[7:9, 9:11] = 1.5  # a separate, weaker blob over the threshold
    assert box_from_map(cam, 0.4) == [3, 2, 7, 5]
    assert box_from_map(np.ones((4, 5)), 0.5) == [0, 0, 5, 4]  # a flat map: the whole slice
    with pytest.raises(ValueError, match="threshold"):
        box_from_map(cam, 1.5)


def test_mismatched_windows_and_channels_are_refused():
    with pytest.raises(ValueError, match="in_chans=1"):
        ROIClassifierModule(backbone=TINY, windows=["lung", "mediastinal", "bone"])


def test_fit_checkpoint_propose(tmp_path, synthetic_root):
    run = tmp_path / "run"
    overlay = {
        "model": {"init_args": {"backbone": TINY, "image_size": 32}},
        "data": {
            "init_args": {
                "data_dir": str(synthetic_root),
                "synthetic": None,
                "image_size": 32,
                "slices_per_volume": 4,
                "batch_size": 2,
                "num_workers": 0,
            }
        },
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,  # then validation at the epoch's end, which the checkpoint monitors
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "default_root_dir": str(run),
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "ckpt"), "monitor": "val/loss", "save_last": True},
                }
            ],
        },
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    cli = main(["fit", "--config", CONFIG, "--config", str(path)])
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    assert (run / "ckpt" / "last.ckpt").is_file() and list((run / "ckpt").glob("epoch=0-step=2*.ckpt"))

    module = ROIClassifierModule.load_from_checkpoint(run / "ckpt" / "last.ckpt", map_location="cpu")
    assert module.hparams.backbone == TINY and module.hparams.windows == ["lung"]
    row = read_split(synthetic_root, "valid").iloc[0].to_dict()
    volume = load_ct_volume(CTRATEPaths(synthetic_root, "valid").volume(row["VolumeName"]), row)
    _, width, height, depth = volume.shape
    k, (x0, y0, x1, y1) = module.propose(volume, "Lung nodule")
    assert 0 <= k < depth
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    with pytest.raises(ValueError, match="unknown label"):
        module.propose(volume, "Nodule")

    # The same proposal through the ROI source (which keeps a volume's maps for its other labels) and the builder.
    from datamodules.roi_sources import ROIQuery
    from datamodules.vqa_builder import build_vqa
    from lightning_modules.roi_classifier import CAMROI

    cropped = volume[:, :, :96]  # non-square slices: 96 rows (Y) × 128 columns (X)
    k2, (x0b, y0b, x1b, y1b) = module.propose(cropped, "Cardiomegaly")
    assert 0 <= x0b < x1b <= 128 and 0 <= y0b < y1b <= 96

    source = CAMROI(str(run / "ckpt" / "last.ckpt"))
    description = source.describe()
    assert len(description["checkpoint_sha256"]) == 64 and "device" not in description["init_args"]
    p = source.propose(ROIQuery(volume, row["VolumeName"], row, synthetic_root, "Lung nodule"))
    assert (p.slice_index, p.boxes, p.source) == (k, [[x0, y0, x1, y1]], "cam")
    paths = build_vqa(synthetic_root, tmp_path / "vqa-cam", seed=0, roi_source=source)
    recs = [json.loads(line) for p in paths.values() for line in p.read_text().splitlines()]
    assert {r["roi_source"] for r in recs if r["question_type"] in ("presence", "abnormality")} == {"cam"}

    # K candidate views: the classifier's top slices for the label, best first, at least min_slices apart.
    query = ROIQuery(volume, row["VolumeName"], row, synthetic_root, "Lung nodule")
    many = source.propose_many(query, 3, 4)
    slices = [v.slice_index for v in many]
    assert len(many) == 3 and slices[0] == k and many[0].boxes == [[x0, y0, x1, y1]]
    assert all(abs(a - b) >= 4 for i, a in enumerate(slices) for b in slices[i + 1 :])
    logits = module.volume_maps(volume)[0][:, module.labels.index("Lung nodule")]
    assert logits[slices[0]] >= logits[slices[1]] >= logits[slices[2]]
    assert all(logits[s] <= logits[slices[1]] for s in range(depth) if s != slices[0] and abs(s - slices[0]) >= 4)
