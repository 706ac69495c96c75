"""User CT loading for one-shot inference (datamodules/user_volume.py, dicom_series.py): NIfTI and DICOM to HU/LPS,
masks, views."""

import random
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from datamodules.ctrate import BadSampleError, axial_slice
from datamodules.dicom_series import read_dicom_series
from datamodules.user_volume import choose_view, load_user_mask, load_user_volume

SHAPE = (24, 20, 6)  # (X, Y, Z) in LPS index order
COL_SPACING, ROW_SPACING, SLICE_SPACING = 0.7, 0.8, 2.5  # along X, along Y, along Z (mm)
ORIGIN_LPS = np.array([-10.0, 20.0, -30.0])
CUBE = (slice(4, 7), slice(12, 15), slice(3, 5))  # X 4..6 (left side), Y 12..14, Z 3..4
CUBE_HU = 900
INTERCEPT = -1024
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_volume() -> np.ndarray:
    """Integer HU (X, Y, Z): noisy air with a bright cube at CUBE; noise makes every flip detectable."""
    hu = np.random.default_rng(0).integers(-1040, -960, size=SHAPE).astype(np.float32)
    hu[CUBE] = CUBE_HU
    return hu


def lps_affine() -> np.ndarray:
    aff = np.diag([COL_SPACING, ROW_SPACING, SLICE_SPACING, 1.0])
    aff[:3, 3] = ORIGIN_LPS
    return aff


def stored(hu: np.ndarray, flips: tuple[int, ...] = (), perm: tuple[int, int, int] = (0, 1, 2)):
    """The same scan stored with axes flipped/permuted: (array, RAS affine) as a NIfTI writer would."""
    arr, aff = hu, lps_affine()
    for ax in flips:
        arr = np.flip(arr, ax)
        aff = aff.copy()
        aff[:3, 3] += aff[:3, ax] * (hu.shape[ax] - 1)
        aff[:3, ax] *= -1
    arr = np.ascontiguousarray(arr.transpose(perm))
    aff = aff[:, [*perm, 3]]
    return arr, LPS_TO_RAS @ aff


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(arr, affine), path)
    return path


def dicom_slice(path: Path, pixels: np.ndarray, ipp, iop, series_uid: str, number: int, slope=1.0, inter=0.0):
    """A minimal valid CT image: pixels are (rows, cols) stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = number
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
    ds.SliceThickness = SLICE_SPACING
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.RescaleSlope, ds.RescaleIntercept = slope, inter
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_dicom(folder: Path, hu: np.ndarray, iop=(1, 0, 0, 0, 1, 0), slope=1.0, uid="1.2.3.4") -> list[Path]:
    """``hu`` (LPS index order) as one axis-aligned series with orientation ``iop``, files in shuffled order.

    Returns the files in slice order (ascending along the slice normal).
    """
    folder.mkdir(parents=True, exist_ok=True)
    sx, sy = int(np.sign(iop[0])), int(np.sign(iop[4]))
    flips = tuple(ax for ax, s in enumerate((sx, sy, sx * sy)) if s < 0)
    grid = hu
    for ax in flips:  # grid[c, r, s]: DICOM column, row and slice (normal) order
        grid = np.flip(grid, ax)
    corner = [0 if s > 0 else n - 1 for s, n in zip((sx, sy), hu.shape[:2], strict=True)]
    names = random.Random(0).sample(range(100, 100 + hu.shape[2]), hu.shape[2])  # file order != slice order
    files = []
    for s in range(hu.shape[2]):
        k = s if sx * sy > 0 else hu.shape[2] - 1 - s
        ipp = ORIGIN_LPS + np.array([corner[0] * COL_SPACING, corner[1] * ROW_SPACING, k * SLICE_SPACING])
        raw = (grid[:, :, s].T - INTERCEPT) / slope
        path = folder / f"IM{names[s]}.dcm"
        dicom_slice(path, raw, ipp, iop, uid, number=hu.shape[2] - s, slope=slope, inter=INTERCEPT)
        files.append(path)
    return files


ORIENTATIONS = {
    "LPS": dict(flips=()),  # RAS affine diag(-1, -1, 1)
    "RPS": dict(flips=(0,)),
    "RAS": dict(flips=(0, 1)),
    "LPI": dict(flips=(2,)),
    "PLS": dict(perm=(1, 0, 2)),
}


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_nifti_comes_back_in_lps(tmp_path, name):
    hu = lps_volume()
    arr, aff = stored(hu, **ORIENTATIONS[name])
    assert nib.orientations.aff2axcodes(aff) == tuple(name)
    vol = load_user_volume(write_nifti(tmp_path / "ct.nii.gz", arr.astype(np.int16), aff))
    assert tuple(vol.shape) == (1, *SHAPE) and vol.dtype.is_floating_point
    np.testing.assert_array_equal(vol.numpy()[0], hu)
    np.testing.assert_allclose(vol.affine.numpy(), LPS_TO_RAS @ lps_affine(), atol=1e-6)
    assert np.argwhere(vol.numpy()[0] > 0).min(axis=0).tolist() == [4, 12, 3]
    img = axial_slice(vol, 3)
    assert img.shape == (SHAPE[1], SHAPE[0])
    bright = np.argwhere(img > 0)  # rows = Y, cols = X
    assert bright.min(axis=0).tolist() == [12, 4] and bright.max(axis=0).tolist() == [14, 6]


def test_nifti_header_scaling_gives_hu(tmp_path):
    hu = lps_volume()
    arr, aff = stored(hu, flips=(0, 1))
    path = write_nifti(tmp_path / "raw.nii", (arr - INTERCEPT).astype(np.int16), aff)
    # nibabel recomputes scl_slope/scl_inter on save, so set them in the written header (NIfTI-1 offset 112).
    data = bytearray(path.read_bytes())
    struct.pack_into("<ff", data, 112, 1.0, float(INTERCEPT))
    path.write_bytes(bytes(data))
    assert np.asarray(nib.load(path).dataobj.get_unscaled()).max() == CUBE_HU - INTERCEPT
    np.testing.assert_array_equal(load_user_volume(path).numpy()[0], hu)


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (1, 0, 0, 0, -1, 0)])
def test_dicom_series_equals_nifti(tmp_path, iop):
    hu = lps_volume()
    files = write_dicom(tmp_path / "series", hu, iop=iop)
    (tmp_path / "series" / "README.txt").write_text("not DICOM")  # ignored, as exporters leave such files
    assert sorted(files) != files  # the file names do not give the slice order
    arr, aff = stored(hu, flips=(0, 1))
    from_nifti = load_user_volume(write_nifti(tmp_path / "ct.nii.gz", arr.astype(np.int16), aff))
    from_dicom = load_user_volume(tmp_path / "series")
    np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-5)
    assert nib.orientations.aff2axcodes(from_dicom.affine.numpy()) == ("L", "P", "S")


def test_dicom_series_is_read_in_its_own_order_with_its_ras_affine(tmp_path):
    """IOP (-1, 0, 0, 0, -1, 0): the series runs right to left and front to back, so both in-plane axes are the
    LPS ones flipped; the affine says so and ``load_user_volume`` turns it back to LPS."""
    hu = lps_volume()
    write_dicom(tmp_path / "series", hu, iop=(-1, 0, 0, 0, -1, 0))
    arr, affine = read_dicom_series(tmp_path / "series")
    assert arr.dtype == np.float32 and arr.shape == SHAPE
    np.testing.assert_array_equal(arr, hu[::-1, ::-1, :])
    assert nib.orientations.aff2axcodes(affine) == ("R", "A", "S")


@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_dicom_rescale_gives_hu(tmp_path, slope):
    hu = lps_volume()
    files = write_dicom(tmp_path / "series", hu, slope=slope)
    raw = pydicom.dcmread(files[CUBE[2].start]).pixel_array  # IOP [1,0,0,0,1,0]: slice s is z index s
    assert raw[CUBE[1].start, CUBE[0].start] == (CUBE_HU - INTERCEPT) / slope  # stored values, not HU
    vol = load_user_volume(tmp_path / "series")
    np.testing.assert_array_equal(vol.numpy()[0], hu)
    assert vol.numpy()[0][CUBE].min() == CUBE_HU


def test_dicom_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(BadSampleError, match=r"empty: no DICOM slices with ImagePositionPatient \(1 non-DICOM"):
        load_user_volume(empty)

    hu = lps_volume()
    mixed = tmp_path / "mixed"
    write_dicom(mixed, hu, uid="1.2.3.4")
    dicom_slice(mixed / "scout.dcm", np.zeros((20, 24)), ORIGIN_LPS, (1, 0, 0, 0, 0, -1), "1.2.3.9", number=1)
    with pytest.raises(BadSampleError, match="mixed DICOM series") as err:
        load_user_volume(mixed)
    assert "1.2.3.4 (6 files" in str(err.value) and "1.2.3.9 (1 file, e.g. scout.dcm)" in str(err.value)

    sizes = tmp_path / "sizes"
    write_dicom(sizes, hu)
    dicom_slice(sizes / "small.dcm", np.zeros((10, 12)), ORIGIN_LPS + 50, (1, 0, 0, 0, 1, 0), "1.2.3.4", number=1)
    with pytest.raises(BadSampleError, match=r"different Rows x Columns: 20x24 \(6 files.*10x12 \(1 file"):
        load_user_volume(sizes)

    gap = tmp_path / "gap"
    files = write_dicom(gap, hu)
    files[3].unlink()
    with pytest.raises(BadSampleError, match="uneven slice spacing, 5 mm between .* the rest are 2.5 mm"):
        load_user_volume(gap)


def test_missing_unsupported_and_non_3d_files(tmp_path):
    with pytest.raises(BadSampleError, match="nope.nii.gz: file or folder not found"):
        load_user_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "slice.dcm").write_bytes(b"x")
    with pytest.raises(BadSampleError, match="slice.dcm: expected a NIfTI file .* pass the folder"):
        load_user_volume(tmp_path / "slice.dcm")
    four_d = write_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 4, 3, 2), np.int16), np.eye(4))
    with pytest.raises(BadSampleError, match=r"4d.nii.gz: expected a 3D CT volume, got shape \(4, 4, 3, 2\)"):
        load_user_volume(four_d)
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(BadSampleError, match="bad.nii.gz: cannot read NIfTI"):
        load_user_volume(tmp_path / "bad.nii.gz")


def test_mask_is_reoriented_and_shape_checked(tmp_path):
    hu = lps_volume()
    vol = load_user_volume(write_nifti(tmp_path / "ct.nii.gz", *stored(hu)))
    roi = np.zeros(SHAPE, np.uint8)
    roi[CUBE] = 3  # any nonzero label is ROI
    arr, aff = stored(roi, flips=(0, 1))  # stored RAS, unlike the CT
    mask = load_user_mask(write_nifti(tmp_path / "mask.nii.gz", arr, aff), like=vol)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, roi > 0)

    small = write_nifti(tmp_path / "small.nii.gz", np.ones((5, 5, 6), np.uint8), np.eye(4))
    with pytest.raises(BadSampleError, match=r"small.nii.gz: mask grid \(5, 5, 6\) differs from the CT \(24, 20, 6\)"):
        load_user_mask(small, like=vol)


def test_choose_view_with_mask():
    vol = lps_volume()[None]
    mask = np.zeros(SHAPE, bool)
    mask[2:5, 3:9, 1] = True  # 18 voxels
    mask[10:12, 5:6, 2] = True  # 2 voxels
    assert choose_view(vol, mask=mask) == (1, [[2, 3, 5, 9]])
    assert choose_view(vol, mask=mask, slice_index=2) == (2, [[10, 5, 12, 6]])
    with pytest.raises(BadSampleError, match="empty on slice 4; it covers slices 1..2"):
        choose_view(vol, mask=mask, slice_index=4)
    with pytest.raises(BadSampleError, match="the ROI mask is empty"):
        choose_view(vol, mask=np.zeros(SHAPE, bool))


def test_choose_view_with_box():
    vol = lps_volume()[None]
    assert choose_view(vol, roi=[0, 0, 24, 20]) == (3, [[0, 0, 24, 20]])  # middle slice, whole slice fits
    assert choose_view(vol, roi=[4, 12, 7, 15], slice_index=0) == (0, [[4, 12, 7, 15]])
    for bad in ([0, 0, 25, 20], [0, 0, 24, 21], [5, 0, 5, 10], [-1, 0, 4, 4]):
        with pytest.raises(BadSampleError, match=rf"ROI box \[{bad[0]}, .* does not fit the 24x20"):
            choose_view(vol, roi=bad)
    for k in (6, -1):
        with pytest.raises(BadSampleError, match=rf"slice index {k} is outside 0..5"):
            choose_view(vol, roi=[0, 0, 4, 4], slice_index=k)


def test_choose_view_defaults_to_lungs_or_whole_slice():
    hu = np.full((40, 32, 3), -1000.0, np.float32)
    hu[4:36, 4:28] = 40.0  # body, surrounded by air that touches the border
    hu[8:17, 8:25] = -850.0  # right lung (image left)
    hu[23:33, 9:24] = -850.0  # left lung
    assert choose_view(hu[None]) == (1, [[8, 8, 33, 25]])
    assert choose_view(np.zeros((1, 40, 32, 3), np.float32), slice_index=2) == (2, [[0, 0, 40, 32]])
    with pytest.raises(BadSampleError, match="slice index 3 is outside 0..2"):
        choose_view(hu[None], slice_index=3)


def test_a_truncated_nifti_names_the_file_though_its_voxels_are_decoded_late(tmp_path):
    """nib.load reads the header alone; the cut gzip stream only fails when the voxels are decoded."""
    hu = lps_volume()
    path = write_nifti(tmp_path / "ct.nii.gz", *stored(hu.astype(np.int16)))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    nib.load(path)  # the header still reads
    with pytest.raises(BadSampleError, match=r"/ct.nii.gz: cannot read NIfTI \(EOFError: Compressed file ended"):
        load_user_volume(path)
    vol = load_user_volume(write_nifti(tmp_path / "whole.nii.gz", *stored(hu.astype(np.int16))))
    mask = tmp_path / "mask.nii.gz"
    labels = np.random.default_rng(0).integers(
        0, 255, size=SHAPE, dtype=np.uint8
    )  # noise: half the bytes keep the header
    write_nifti(mask, *stored(labels))
    data = mask.read_bytes()
    mask.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match=r"mask.nii.gz: cannot read NIfTI \(EOFError"):
        load_user_mask(mask, like=vol)


def test_x_y_z_1_is_the_3d_volume_for_both_readers(tmp_path):
    """ANTs and others write a 3D image as (X, Y, Z, 1): the ask reader and the CT-RATE loader both read it as 3D."""
    from datamodules.ctrate import load_ct_volume

    hu = lps_volume()
    arr, aff = stored(hu)
    as_4d = write_nifti(tmp_path / "ct4.nii.gz", arr.astype(np.int16)[..., None], aff)
    np.testing.assert_array_equal(load_user_volume(as_4d).numpy()[0], hu)
    row = {
        "VolumeName": "train_1_a_1.nii.gz",
        "RescaleSlope": 1,
        "RescaleIntercept": INTERCEPT,
        "XYSpacing": f"[{COL_SPACING}, {ROW_SPACING}]",
        "ZSpacing": SLICE_SPACING,
        "ImagePositionPatient": ORIGIN_LPS.tolist(),
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
    }
    np.testing.assert_array_equal(load_ct_volume(as_4d, row).numpy()[0], hu)


def test_values_that_are_not_hu_are_refused(tmp_path):
    hu = lps_volume()
    hu[:4, :4, :] = np.nan  # outside the field of view, as resampling tools write it
    with pytest.raises(BadSampleError, match=r"nan.nii.gz: holds NaN or infinite values \(96 of 2880 voxels"):
        load_user_volume(write_nifti(tmp_path / "nan.nii.gz", *stored(hu)))
    write_dicom(tmp_path / "series", lps_volume() - INTERCEPT)  # HU shifted by 1024, as if never rescaled: no air
    with pytest.raises(BadSampleError, match=r"/series: no voxel below -500 HU \(min -16\)"):
        load_user_volume(tmp_path / "series")
