"""A user's own CT for one-shot inference (``cli.py ask``): NIfTI file or DICOM series folder -> HU/LPS.

Same conventions as ``datamodules/ctrate/``: float32 HU ``MetaTensor`` (1, X, Y, Z) in LPS index order,
``axial_slice`` for display, boxes ``[x0, y0, x1, y1]`` in display coordinates with exclusive ends, and
``BadSampleError`` naming the file and the problem for anything the user can fix. The volume and mask checks are
the training loaders' own (``datamodules/data_checks/``): the same rule for what a 3D volume is, values that are
finite and plausible HU, a mask on the CT's grid, and a read failure named by its file whenever it happens (nibabel
and pydicom decode voxels lazily, after the header). DICOM series are read by ``datamodules/dicom_series.py``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation

from datamodules.ctrate.masks import bbox_of, lung_mask_from_hu
from datamodules.ctrate.volumes import AXCODES, axial_slice
from datamodules.data_checks.errors import BadSampleError, display_path, reading
from datamodules.data_checks.volumes import check_mask_grid, check_volume, volume_shape
from datamodules.dicom_series import read_dicom_series

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _to_lps(arr: np.ndarray, affine_ras: np.ndarray) -> MetaTensor:
    """(X, Y, Z) array with its RAS voxel-to-world affine -> (1, X', Y', Z') MetaTensor in LPS order."""
    vol = MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)[None]), affine=torch.as_tensor(affine_ras))
    return Orientation(axcodes=AXCODES, labels=(("L", "R"), ("P", "A"), ("I", "S")))(vol)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _read_nifti_3d(path: Path, what: str) -> nib.Nifti1Image:
    """The NIfTI image (header read, voxels not yet decoded: decode them inside ``reading`` too)."""
    with reading(path, "NIfTI"):
        img = nib.load(path)
    # Many tools write a 3D image as (X, Y, Z, 1); that is still one volume (the training loader's rule too).
    if len(volume_shape(img.shape, display_path(path), what)) != len(img.shape):
        img = img.slicer[..., 0]
    return img


def _load_nifti(path: Path) -> MetaTensor:
    img = _read_nifti_3d(path, "CT volume")
    with reading(path, "NIfTI"):
        # get_fdata applies scl_slope/scl_inter, which is how NIfTI converters store HU.
        hu = img.get_fdata(dtype=np.float32)
    check_volume(hu, path)
    return _to_lps(hu, np.asarray(img.affine, dtype=np.float64))


def load_user_volume(path: str | Path) -> MetaTensor:
    """HU volume as float32 MetaTensor (1, X, Y, Z) in LPS from a NIfTI file or a DICOM series folder."""
    path = Path(path)
    where = display_path(path)
    if not path.exists():
        raise BadSampleError(f"{where}: file or folder not found")
    if path.is_dir():
        vol = _to_lps(*read_dicom_series(path))
    elif _is_nifti(path):
        vol = _load_nifti(path)
    else:
        raise BadSampleError(
            f"{where}: expected a NIfTI file (.nii/.nii.gz) or a folder holding one DICOM series "
            "(for DICOM, pass the folder, not a single slice)"
        )
    return vol.float()


def load_user_mask(path: str | Path, like: MetaTensor) -> np.ndarray:
    """NIfTI ROI mask (nonzero = ROI) as bool (X, Y, Z) in LPS, on the grid of ``like`` (1, X, Y, Z)."""
    path = Path(path)
    where = display_path(path)
    if not path.is_file():
        raise BadSampleError(f"{where}: file not found")
    if not _is_nifti(path):
        raise BadSampleError(f"{where}: expected a NIfTI mask (.nii/.nii.gz)")
    img = _read_nifti_3d(path, "mask")
    with reading(path, "NIfTI"):
        # dataobj, not get_fdata: a label map needs no float copy, and nonzero survives any header scaling.
        raw = np.asanyarray(img.dataobj) != 0
    mask = _to_lps(raw.astype(np.uint8), np.asarray(img.affine, dtype=np.float64)).numpy()[0] > 0
    check_mask_grid(path, mask.shape, like.shape[1:])
    return mask


def _check_slice(k: int, depth: int) -> int:
    if not 0 <= k < depth:
        raise BadSampleError(f"slice index {k} is outside 0..{depth - 1}")
    return int(k)


def choose_view(
    volume: torch.Tensor | np.ndarray,
    roi: list[int] | None = None,
    mask: np.ndarray | None = None,
    slice_index: int | None = None,
) -> tuple[int, list[list[int]]]:
    """Axial slice index and ROI boxes ``[[x0, y0, x1, y1]]`` (display coordinates) to show for a volume.

    Mask: its fullest slice (or ``slice_index``) and its box there. Box: checked against the slice,
    shown on ``slice_index`` or the middle slice. Neither: the lungs' box on that slice, else the whole slice.
    """
    _, width, height, depth = tuple(volume.shape)
    if roi is not None and mask is not None:
        raise BadSampleError("give either an ROI box or an ROI mask, not both")

    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (width, height, depth):
            raise BadSampleError(f"ROI mask shape {mask.shape} does not match the CT volume's {(width, height, depth)}")
        per_slice = mask.sum(axis=(0, 1))
        if not per_slice.any():
            raise BadSampleError("the ROI mask is empty")
        k = int(np.argmax(per_slice)) if slice_index is None else _check_slice(slice_index, depth)
        if not per_slice[k]:
            present = np.flatnonzero(per_slice)
            raise BadSampleError(f"the ROI mask is empty on slice {k}; it covers slices {present[0]}..{present[-1]}")
        return k, [bbox_of(mask[:, :, k].T)]

    k = depth // 2 if slice_index is None else _check_slice(slice_index, depth)
    if roi is not None:
        box = [int(v) for v in roi]
        x0, y0, x1, y1 = box if len(box) == 4 else (0, 0, 0, 0)
        if len(box) != 4 or not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise BadSampleError(
                f"ROI box {list(roi)} does not fit the {width}x{height} (width x height) axial slice: "
                f"need [x0, y0, x1, y1] with 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
            )
        return k, [box]

    lungs = lung_mask_from_hu(axial_slice(volume, k))
    return k, [bbox_of(lungs) if lungs.any() else [0, 0, width, height]]
