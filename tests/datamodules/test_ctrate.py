"""CT-RATE readers (datamodules/ctrate/): HU, orientation, error messages, masks, boxes; the package's re-exports."""

import importlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import datamodules.ctrate as ctrate
from datamodules.ctrate import (
    BadSampleError,
    CTRATEPaths,
    axial_slice,
    bbox_of,
    label_components,
    load_ct_volume,
    load_grounding,
    load_lesion_mask,
    read_csv_checked,
    read_split,
)
from datamodules.ctrate.volumes import read_nifti
from datamodules.synthetic_ctrate import INTERCEPT, SHAPE, make_phantom


@pytest.fixture
def synth(synthetic_root):
    """The session's synthetic CT-RATE (conftest.py); these tests only read it."""
    return synthetic_root


def _first(root):
    row = read_split(root, "train").iloc[0].to_dict()
    return CTRATEPaths(root, "train").volume(row["VolumeName"]), row


def test_paths_follow_ct_rate_names(tmp_path):
    train, valid = CTRATEPaths(tmp_path, "train"), CTRATEPaths(tmp_path, "valid")
    assert train.volume("train_1_a_1.nii.gz") == tmp_path / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    assert valid.metadata_csv.name == "validation_metadata.csv"
    assert valid.reports_csv.name == "validation_reports.csv"
    assert valid.labels_csv.name == "valid_predicted_labels.csv"
    assert train.lesion_mask("train_1_a_1.nii.gz") == tmp_path / "rexgroundingct/segmentations/train_1_a_1.nii.gz"


def test_load_ct_volume_hu_and_lps(synth):
    path, row = _first(synth)
    vol = load_ct_volume(path, row)
    assert tuple(vol.shape) == (1, *SHAPE) and vol.dtype.is_floating_point
    assert nib.orientations.aff2axcodes(vol.affine.numpy()) == ("L", "P", "S")
    img = axial_slice(vol, 16)
    assert img.shape == (SHAPE[1], SHAPE[0]) and img.dtype == np.float32
    assert abs(np.median(img[:5, :5]) + 1000) < 30  # air
    assert np.median(img[62, 40]) < -500 and np.median(img[62, 88]) < -500  # both lungs
    assert img[97, 64] > 300  # spine, posterior = bottom rows


def test_fixed_volume_is_not_rescaled_twice(synth, tmp_path):
    path, row = _first(synth)
    raw = np.asarray(nib.load(path).dataobj)
    fixed = tmp_path / "dataset/train/train_1/train_1_a/fixed.nii.gz"
    fixed.parent.mkdir(parents=True)
    # fix_metadata.py writes HU int16 with a real LPS->RAS affine.
    nib.save(nib.Nifti1Image((raw + INTERCEPT).astype(np.int16), np.diag([-2.5, -2.5, 5.0, 1.0])), fixed)
    np.testing.assert_allclose(load_ct_volume(fixed, row).numpy(), load_ct_volume(path, row).numpy())


def test_reorients_from_metadata(synth, tmp_path):
    """A volume stored with rows flipped (IOP row cosine -x) comes back in the same LPS array."""
    path, row = _first(synth)
    raw = np.asarray(nib.load(path).dataobj)
    flipped = tmp_path / "dataset/flipped.nii.gz"
    flipped.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(raw[::-1, :, ::-1]), np.eye(4)), flipped)
    meta = {**row, "ImageOrientationPatient": "[-1, 0, 0, 0, 1, 0]"}  # cross product -> -z as well
    np.testing.assert_allclose(load_ct_volume(flipped, meta).numpy(), load_ct_volume(path, row).numpy())


def test_missing_and_corrupt_files_name_the_file(synth, tmp_path):
    _, row = _first(synth)
    with pytest.raises(BadSampleError, match="train_9_a_1.nii.gz: file not found"):
        load_ct_volume(CTRATEPaths(tmp_path, "train").volume("train_9_a_1.nii.gz"), row)
    bad = CTRATEPaths(tmp_path, "train").volume("train_3_a_1.nii.gz")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a gzip file at all" * 10)
    with pytest.raises(BadSampleError, match=r"dataset/train/train_3/train_3_a/train_3_a_1.nii.gz: cannot read NIfTI"):
        load_ct_volume(bad, row)


def test_wrong_ndim_and_bad_metadata(synth, tmp_path):
    path, row = _first(synth)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), flat)
    with pytest.raises(BadSampleError, match=r"flat.nii.gz: expected a 3D CT volume, got shape \(4, 4\)"):
        load_ct_volume(flat, row)
    with pytest.raises(BadSampleError, match="field 'XYSpacing'"):
        load_ct_volume(path, {**row, "XYSpacing": "[0.75]"})


def test_csv_missing_column_names_file_and_field(synth, tmp_path):
    meta = pd.read_csv(CTRATEPaths(synth, "train").metadata_csv).drop(columns=["RescaleSlope"])
    out = CTRATEPaths(tmp_path, "train").metadata_csv
    out.parent.mkdir(parents=True)
    meta.to_csv(out, index=False)
    with pytest.raises(BadSampleError, match="metadata/train_metadata.csv: missing column 'RescaleSlope'"):
        read_csv_checked(out, ["VolumeName", "RescaleSlope"])
    with pytest.raises(BadSampleError, match="file not found"):
        read_csv_checked(tmp_path / "nope.csv", ["VolumeName"])


def test_grounding_and_mask_channels(synth):
    grounding = load_grounding(synth)
    name, findings = next(iter(sorted(grounding.items())))
    split = name.split("_")[0]
    row = read_split(synth, split).set_index("VolumeName").loc[name].to_dict() | {"VolumeName": name}
    masks = load_lesion_mask(CTRATEPaths(synth, split).lesion_mask(name), row)
    assert masks.dtype == bool and masks.shape == (len(findings), *SHAPE)
    assert [f.index for f in findings] == list(range(len(findings)))


def test_channel_last_mask_is_accepted(tmp_path):
    mask = np.zeros((2, 10, 12, 6), np.uint8)
    mask[1, 2:4, 3:5, 1] = 1
    path = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(mask, 0, 3), np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    np.testing.assert_array_equal(load_lesion_mask(path), mask.astype(bool))


def test_grounding_json_errors(tmp_path):
    assert load_grounding(tmp_path) == {}
    path = CTRATEPaths(tmp_path).grounding_json
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"train": [{"name": "train_1_a_1.nii.gz"}]}))
    with pytest.raises(BadSampleError, match="rexgroundingct/dataset.json: entry 0 needs fields"):
        load_grounding(tmp_path)


def test_bbox_and_components():
    m = np.zeros((8, 10), bool)
    m[2:4, 5:9] = True
    m[6, 0] = True
    assert bbox_of(m) == [0, 2, 9, 7]
    labels, n = label_components(m)
    assert n == 2 and bbox_of(labels == labels[2, 5]) == [5, 2, 9, 4]
    with pytest.raises(BadSampleError):
        bbox_of(np.zeros((3, 3), bool))


def test_phantom_is_lps():
    ph = make_phantom(np.random.default_rng(1), findings=False)
    img = ph.hu[:, :, 8].T
    assert img[40:55, 60:80].mean() > 0  # heart: anterior (top) and to the patient's left (image right)


def test_package_names_are_its_modules_objects():
    """``from datamodules.ctrate import X`` gives the object of X's one home module, for every name it exports."""
    homes = ("paths", "tables", "volumes", "masks")
    modules = [importlib.import_module(f"datamodules.ctrate.{m}") for m in homes]
    modules += [importlib.import_module(f"datamodules.data_checks.{m}") for m in ("errors", "tables")]
    for name in ctrate.__all__:
        assert any(vars(m).get(name) is getattr(ctrate, name) for m in modules), name


def test_read_nifti_gives_voxels_and_header_affine_or_names_the_file(tmp_path):
    path = tmp_path / "v.nii.gz"
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), affine), path)
    arr, header_affine = read_nifti(path)
    np.testing.assert_array_equal(arr, np.arange(24).reshape(2, 3, 4))
    np.testing.assert_array_equal(header_affine, affine)
    with pytest.raises(BadSampleError, match="nope.nii.gz: file not found"):
        read_nifti(tmp_path / "nope.nii.gz")
