"""Synthetic CT-RATE generator (datamodules/synthetic_ctrate.py): layout, columns, determinism, phantom, and the
second scanner (B), which images the same patients differently."""

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from datamodules import check_data
from datamodules.ctrate import CTRATE_LABELS, REPORT_COLUMNS, CTRATEPaths, load_ct_volume, lung_mask_from_hu
from datamodules.synthetic_ctrate import SCANNERS, SHAPE, Phantom, generate, make_phantom
from datamodules.vqa_builder import build_vqa
from datamodules.vqa_records import read_vqa_jsonl

NAME_RE = re.compile(r"\w+_(\d+)_(\w+)_(\d+)\.nii\.gz")


@pytest.fixture(scope="module", params=["A", "B"])
def synth(tmp_path_factory, request):
    root = tmp_path_factory.mktemp(f"syn{request.param}")
    generate(root, n=8, seed=3, scanner=request.param)
    return root


def shape_of(root: Path) -> tuple[int, int, int]:
    """The volume grid of a generated set: scanner B slices each 5 mm slab in two."""
    meta = pd.read_csv(CTRATEPaths(root, "train").metadata_csv)
    return (SHAPE[0], SHAPE[1], SHAPE[2] * round(5.0 / float(meta["ZSpacing"].iloc[0])))


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
        assert (meta["SliceThickness"] == meta["ZSpacing"]).all()


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
    assert img.shape == shape_of(synth) and img.get_data_dtype() == np.int16
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
                assert mask.shape == (len(texts), *shape_of(synth))
                assert all(mask[c].any() for c in range(len(texts)))


def test_lung_mask_from_hu_matches_phantom_lungs():
    ph = make_phantom(np.random.default_rng(0), findings=False)
    for k in (8, 16, 24):
        truth = ph.lungs[:, :, k].T
        pred = lung_mask_from_hu(ph.hu[:, :, k].T)
        dice = 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
        assert dice > 0.9, (k, dice)


def _digest(root: Path) -> str:
    """SHA-256 over every file's path and content (NIfTI by voxels, dtype and shape: gzip headers hold a time)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        if path.name.endswith(".nii.gz"):
            arr = np.asarray(nib.load(path).dataobj)
            h.update(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes())
        else:
            h.update(path.read_bytes())
    return h.hexdigest()


def test_scanner_a_is_bit_identical_to_the_generator_before_scanner_b(tmp_path):
    """The digest of the code before the scanner argument existed: `make demo`'s data must not move."""
    generate(tmp_path, n=3, seed=5)
    assert _digest(tmp_path) == "51ccc9e3e885095e317406c750011283881282b8fa7c4baffd5ba55208693931"


@pytest.fixture(scope="module")
def phantoms() -> dict[str, list[Phantom]]:
    """The same four patients (one rng seed each) on both scanners."""
    return {s: [make_phantom(np.random.default_rng([0, i]), scanner=s) for i in range(4)] for s in SCANNERS}


def _heart_core(ph: Phantom) -> np.ndarray:
    """A uniform 40 HU region: the heart minus a 2-voxel in-plane rim (its edge, coronary specks)."""
    return ndimage.binary_erosion(ph.regions["heart"], np.ones((5, 5, 1), bool))


def test_scanner_b_images_the_same_patients_on_thinner_slices(phantoms):
    for a, b in zip(phantoms["A"], phantoms["B"], strict=True):
        assert a.hu.shape == SHAPE and b.hu.shape == (*SHAPE[:2], 2 * SHAPE[2])
        assert [(les.label, les.text) for les in a.lesions] == [(les.label, les.text) for les in b.lesions]
        assert a.labels == b.labels
        for les_a, les_b in zip(a.lesions, b.lesions, strict=True):  # each 5 mm slab is two 2.5 mm slices
            np.testing.assert_array_equal(np.repeat(les_a.mask, 2, axis=2), les_b.mask)
        np.testing.assert_array_equal(np.repeat(a.regions["heart"], 2, axis=2), b.regions["heart"])


def test_scanner_b_noise_kernel_and_offset_differ_as_specified(phantoms):
    for a, b in zip(phantoms["A"], phantoms["B"], strict=True):
        core_a, core_b = _heart_core(a), _heart_core(b)
        # Noise in a uniform region: 12 HU white on A; ~24 HU on B, anticorrelated by the sharp kernel.
        assert 11.0 < a.hu[core_a].std() < 13.0 and 22.0 < b.hu[core_b].std() < 25.5
        pairs = core_a & np.roll(core_a, 1, axis=0)
        assert abs(np.corrcoef(a.hu[pairs], np.roll(a.hu, 1, axis=0)[pairs])[0, 1]) < 0.04
        pairs = core_b & np.roll(core_b, 1, axis=0)
        assert np.corrcoef(b.hu[pairs], np.roll(b.hu, 1, axis=0)[pairs])[0, 1] < -0.05
        # HU offset +25, in soft tissue and in air outside the body.
        assert b.hu[core_b].mean() - a.hu[core_a].mean() == pytest.approx(25.0, abs=1.5)
        assert np.median(b.hu[:4]) - np.median(a.hu[:4]) == pytest.approx(25.0, abs=1.5)
        # Edge: the largest step across the body's air/fat edge, as a share of the 900 HU jump. A's one-voxel step
        # is ~1; B's kernel overshoots on both sides of it.
        for ph, low, high in ((a, 0.9, 1.1), (b, 1.15, 1.5)):
            steps = np.abs(np.diff(ph.hu[:20, 60:72, :], axis=0)).max(axis=0) / 900
            assert low < np.median(steps) < high


def test_every_finding_stays_visible_on_scanner_b(phantoms):
    """Each lesion's contrast against its surroundings (aerated lung where it borders lung) keeps at least half of
    what it has on A: the shift is in acquisition, not in what can be seen."""
    for a, b in zip(phantoms["A"], phantoms["B"], strict=True):
        for les_a, les_b in zip(a.lesions, b.lesions, strict=True):
            shell = ndimage.binary_dilation(les_a.mask, np.ones((5, 5, 1), bool)) & ~les_a.mask
            around = shell & a.lungs if (shell & a.lungs).sum() >= 5 else shell
            background = np.median(a.hu[around])
            contrast_a = a.hu[les_a.mask].mean() - background
            contrast_b = b.hu[les_b.mask].mean() - SCANNERS["B"].hu_offset - background
            assert contrast_b / contrast_a > 0.5, (les_a.label, contrast_a, contrast_b)


@pytest.fixture(scope="module")
def scanner_b_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scannerB")
    generate(root, n=5, seed=0, scanner="B")
    build_vqa(root, seed=0)
    return root


def test_scanner_b_metadata_and_volumes_on_disk(scanner_b_set):
    meta = pd.read_csv(CTRATEPaths(scanner_b_set, "train").metadata_csv)
    assert set(meta["Manufacturer"]) == {"SYNTHETIC-B"} and set(meta["ManufacturerModelName"]) == {"Phantom-B64"}
    assert set(meta["ZSpacing"]) == {2.5} and set(meta["SliceThickness"]) == {2.5}
    row = meta.iloc[0].to_dict()
    vol = load_ct_volume(CTRATEPaths(scanner_b_set, "train").volume(row["VolumeName"]), row)
    assert tuple(vol.shape) == (1, *SHAPE[:2], 64) and float(vol.pixdim[2]) == 2.5
    reports = pd.read_csv(CTRATEPaths(scanner_b_set, "train").reports_csv)
    assert set(reports["Technique_EN"]) == {"Non-contrast chest CT, 2.5 mm axial sections."}


def test_scanner_b_set_passes_check_data_and_builds_vqa(scanner_b_set, capsys):
    assert check_data.main(["--data_dir", str(scanner_b_set)]) == 0
    assert "no problems" in capsys.readouterr().out
    records, problems = read_vqa_jsonl(scanner_b_set / "vqa" / "train.jsonl", split="train")
    assert not problems and {"presence", "location"} <= {r["question_type"] for r in records}
    assert max(r["slice_index"] for r in records) >= SHAPE[2]  # slices of the 64-slice grid, not the 32 of A
