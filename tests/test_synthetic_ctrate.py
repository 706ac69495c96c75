"""Synthetic CT-RATE generator (datamodules/synthetic_ctrate.py): layout, columns, determinism, phantom."""

import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from datamodules.ctrate import CTRATE_LABELS, REPORT_COLUMNS, CTRATEPaths, lung_mask_from_hu
from datamodules.synthetic_ctrate import SHAPE, generate, make_phantom

NAME_RE = re.compile(r"\w+_(\d+)_(\w+)_(\d+)\.nii\.gz")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate(root, n=8, seed=3)
    return root


def test_layout_and_naming_match_ct_rate(synth):
    volumes = sorted(synth.glob("dataset/*/*/*/*.nii.gz"))
    assert len(volumes) == 8
    for path in volumes:
        assert NAME_RE.fullmatch(path.name)
        split = path.name.split("_")[0]
        assert path == CTRATEPaths(synth, split).volume(path.name)
    for split in ("train", "valid"):
        paths = CTRATEPaths(synth, split)
        assert paths.metadata_csv.is_file() and paths.reports_csv.is_file() and paths.labels_csv.is_file()
    assert (synth / "dataset/metadata/validation_metadata.csv").is_file()
    assert (synth / "dataset/multi_abnormality_labels/valid_predicted_labels.csv").is_file()


def test_csv_columns_exactly_as_ct_rate(synth):
    for split in ("train", "valid"):
        paths = CTRATEPaths(synth, split)
        labels = pd.read_csv(paths.labels_csv)
        assert list(labels.columns) == ["VolumeName", *CTRATE_LABELS] and len(CTRATE_LABELS) == 18
        assert set(np.unique(labels[list(CTRATE_LABELS)].to_numpy())) <= {0, 1}
        assert list(pd.read_csv(paths.reports_csv).columns) == list(REPORT_COLUMNS)
        meta = pd.read_csv(paths.metadata_csv)
        for col in (
            "VolumeName",
            "RescaleSlope",
            "RescaleIntercept",
            "XYSpacing",
            "ZSpacing",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "Rows",
            "Columns",
        ):
            assert col in meta.columns
        assert meta["XYSpacing"].iloc[0] == "[2.5, 2.5]"


def test_no_patient_in_both_splits(synth):
    pids = {
        s: {n.rsplit("_", 2)[0] for n in pd.read_csv(CTRATEPaths(synth, s).labels_csv)["VolumeName"]}
        for s in ("train", "valid")
    }
    assert pids["train"] and pids["valid"] and not pids["train"] & pids["valid"]
    # As in CT-RATE, patients are numbered per split: every scan of train_3 is under dataset/train.
    assert all(p.startswith("train_") for p in pids["train"]) and all(p.startswith("valid_") for p in pids["valid"])


def test_deterministic(tmp_path):
    generate(tmp_path / "a", n=6, seed=1)
    generate(tmp_path / "b", n=6, seed=1)
    for csv in sorted((tmp_path / "a").rglob("*.csv")):
        assert csv.read_bytes() == (tmp_path / "b" / csv.relative_to(tmp_path / "a")).read_bytes()
    ja = (tmp_path / "a/rexgroundingct/dataset.json").read_bytes()
    assert ja == (tmp_path / "b/rexgroundingct/dataset.json").read_bytes()
    for vol in sorted((tmp_path / "a").rglob("*.nii.gz")):
        other = tmp_path / "b" / vol.relative_to(tmp_path / "a")
        np.testing.assert_array_equal(np.asarray(nib.load(vol).dataobj), np.asarray(nib.load(other).dataobj))


def test_volumes_stored_raw_like_downloads(synth):
    vol = next(synth.glob("dataset/train/*/*/*.nii.gz"))
    img = nib.load(vol)
    assert img.shape == SHAPE and img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(img.affine, np.eye(4))  # true geometry only in the metadata CSV
    assert np.asarray(img.dataobj).min() > -200  # stored values, not HU


def test_labels_reports_and_masks_agree(synth):
    grounding = json.loads((synth / "rexgroundingct/dataset.json").read_text())
    entries = {e["name"]: e for v in grounding.values() for e in v}
    for split in ("train", "valid"):
        paths = CTRATEPaths(synth, split)
        labels = pd.read_csv(paths.labels_csv).set_index("VolumeName")
        reports = pd.read_csv(paths.reports_csv).set_index("VolumeName")
        for name, row in labels.iterrows():
            texts = list(entries.get(name, {"findings": {}})["findings"].values())
            if row["Lung nodule"]:
                assert any("nodule" in t for t in texts) and "nodule" in reports.loc[name, "Findings_EN"]
            if row.sum() and name in entries:
                mask = nib.load(paths.lesion_mask(name)).get_fdata()
                assert mask.shape == (len(texts), *SHAPE)
                assert all(mask[c].any() for c in range(len(texts)))


def test_lung_mask_from_hu_matches_phantom_lungs():
    ph = make_phantom(np.random.default_rng(0), findings=False)
    for k in (8, 16, 24):
        truth = ph.lungs[:, :, k].T
        pred = lung_mask_from_hu(ph.hu[:, :, k].T)
        dice = 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
        assert dice > 0.9, (k, dice)
