"""The data checks (datamodules/data_checks/) as plain functions; tests/datamodules/test_check_data.py shows
that check_data and the loaders report each of them the same way."""

from __future__ import annotations

import gzip
import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules import data_checks as dc

ROW = {
    "VolumeName": "train_1_a_1.nii.gz",
    "RescaleSlope": 1,
    "RescaleIntercept": -1024,
    "XYSpacing": "[0.75, 0.75]",
    "ZSpacing": 1.5,
    "ImagePositionPatient": "[0, 0, 0]",
    "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
    dc.WHERE: "dataset/metadata/train_metadata.csv:7",
}


def test_x_y_z_1_is_3d_and_other_shapes_are_refused() -> None:
    assert dc.volume_shape((4, 5, 6, 1), "v") == (4, 5, 6)
    assert dc.volume_shape((4, 5, 6), "v") == (4, 5, 6)
    for shape in ((4, 5, 6, 2), (4, 5), (1, 4, 5, 6)):
        with pytest.raises(dc.BadSampleError, match=rf"^v: expected a 3D CT volume, got shape \({shape[0]}, "):
            dc.volume_shape(shape, "v")


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [("[0.75, 0.7]", 2, [0.75, 0.7]), ([1, 2, 3], 3, [1.0, 2.0, 3.0]), ("[0.75]", 2, None), ("[nan, 1]", 2, None)]
    + [("0.75", 1, None), ("[", 1, None), (float("nan"), 1, None)],
)
def test_numbers_are_lists_of_finite_numbers(text: object, n: int, expected: list[float] | None) -> None:
    assert dc.numbers(text, n) == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        ({"RescaleSlope": 0}, [("RescaleSlope", "0 is not a non-zero number")]),
        ({"RescaleIntercept": float("nan")}, [("RescaleIntercept", "nan is not a number")]),
        ({"ZSpacing": -1.5}, [("ZSpacing", "-1.5 is not a positive number")]),
        ({"XYSpacing": "[0.75, 0]"}, [("XYSpacing", "'[0.75, 0]' has a non-positive spacing")]),
        ({"ImagePositionPatient": "[0, 0]"}, [("ImagePositionPatient", "'[0, 0]' is not a list of 3 numbers")]),
        (
            {"ImageOrientationPatient": "[1, 0, 0, 1, 0, 0]"},
            [("ImageOrientationPatient", "'[1, 0, 0, 1, 0, 0]': the row and column directions are parallel or zero")],
        ),
    ],
)
def test_geometry_problems_name_the_field(changes: dict, expected: list[tuple[str, str]]) -> None:
    row = {**ROW, **changes}
    assert dc.geometry_problems(row) == expected
    if expected:
        field, message = expected[0]
        with pytest.raises(dc.BadSampleError) as err:
            dc.check_geometry(row)
        assert str(err.value) == f"dataset/metadata/train_metadata.csv:7: field '{field}': {message}"


def test_hu_problems_from_min_and_max() -> None:
    assert dc.hu_problems(torch.tensor([-1024.0, 40.0, 1500.0])) == []
    assert dc.hu_problems(np.array([-1024.0, math.inf])) == ["holds NaN or infinite values"]
    assert dc.hu_problems(np.array([math.nan, -1024.0, 10.0])) == ["holds NaN or infinite values"]
    volume = np.full((4, 4, 2), -1000.0, np.float32)
    volume[0, 0, :] = np.nan
    assert dc.volume_problem(volume, ROW) == (
        "holds NaN or infinite values (2 of 32 voxels; outside the field of view?)"
    )
    assert dc.volume_problem(volume[1:] + 1000, ROW) == (
        "no voxel below -500 HU (min 0): no air, so not HU (raw values never rescaled?); check the file's scaling "
        "and dataset/metadata/train_metadata.csv:7: RescaleSlope 1, RescaleIntercept -1024"
    )


def test_keys_listed_again_malformed_or_unknown() -> None:
    keys = ["train_1_a_1.nii.gz", "train_2_a_1.nii.gz", "train_1_a_1.nii.gz", float("nan"), "x", "test_1_a_1.nii.gz"]
    lines = [2, 3, 5, 6, 7, 8]
    assert dc.duplicate_problems(keys, lines) == [
        (5, "VolumeName", "'train_1_a_1.nii.gz' is listed again (first on line 2)")
    ]
    assert dc.name_problems(keys, lines) == [
        (6, "VolumeName", "missing"),
        (7, "VolumeName", "'x' does not match '<split>_<patient>_<scan>_<recon>.nii.gz'"),
        (8, "VolumeName", "'test_1_a_1.nii.gz': split 'test' is not one of ('train', 'valid')"),
    ]
    assert dc.unknown_problems(keys[:2], lines[:2], {"train_1_a_1.nii.gz"}, "meta.csv") == [
        (3, "VolumeName", "'train_2_a_1.nii.gz' has no row in meta.csv")
    ]


def test_labels_are_judged_by_number() -> None:
    frame = pd.DataFrame({"A": ["1", "0", "yes"], "B": [1.0, 2.0, 0.0]})  # "yes" made pandas read A as text
    assert dc.label_problems(frame, [2, 3, 4], ["A", "B"]) == [
        (3, "B", "must be 0 or 1, got 2.0"),
        (4, "A", "must be 0 or 1, got 'yes'"),
    ]


def test_reading_names_the_file_for_late_failures(tmp_path) -> None:
    path = tmp_path / "dataset" / "x.nii.gz"
    with pytest.raises(dc.BadSampleError, match=r"^dataset/x.nii.gz: cannot read NIfTI \(EOFError: Compressed"):
        with dc.reading(path, "NIfTI"):
            gzip.decompress(gzip.compress(b"0" * 100)[:10])
    with pytest.raises(dc.BadSampleError, match="^unchanged$"), dc.reading(path, "NIfTI"):
        raise dc.BadSampleError("unchanged")


def test_mask_grid() -> None:
    dc.check_mask_grid("m.nii.gz", (4, 5, 6), torch.Size([4, 5, 6]))
    with pytest.raises(dc.BadSampleError, match=r"^m.nii.gz: mask grid \(4, 5, 3\) differs from the CT \(4, 5, 6\)$"):
        dc.check_mask_grid("m.nii.gz", (4, 5, 3), (4, 5, 6))


def test_package_reexports_each_module_s_own_objects() -> None:
    """``from datamodules.data_checks import X`` gives the object its one module defines."""
    modules = [importlib.import_module(f"datamodules.data_checks.{m}") for m in ("errors", "tables", "volumes")]
    for name in dc.__all__:
        owners = [m.__name__ for m in modules if name in vars(m) and vars(m)[name] is getattr(dc, name)]
        assert owners, name
