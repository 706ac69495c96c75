"""Masks on the CT's LPS grid: ReXGroundingCT lesion masks, connected components, lung fields and boxes.

Boxes are ``[x0, y0, x1, y1]`` in display coordinates (x = column, y = row of ``axial_slice``), exclusive ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from datamodules.ctrate.volumes import AXCODES, affine_from_metadata, read_nifti
from datamodules.data_checks.errors import BadSampleError, display_path, reading
from datamodules.data_checks.volumes import check_geometry


def load_lesion_mask(path: str | Path, meta: Mapping[str, Any] | None = None) -> np.ndarray:
    """ReXGroundingCT mask as bool (K, X, Y, Z) in the same LPS grid as ``load_ct_volume``.

    Channel axis: the release stores one channel per finding in the CT's native voxel grid; we take the
    smaller of axis 0 / axis 3 as the channel axis (K findings << spatial size), so channel-first
    (K, X, Y, Z) and channel-last 4D NIfTIs both load; a 3D file is one channel. Orientation: with
    ``meta`` the CT's metadata affine is used (native grid == CT grid), else the header affine when the
    file is a proper channel-last 4D/3D NIfTI, else the native grid is taken as already LPS.
    """
    path = Path(path)
    if meta is not None:
        check_geometry(meta)
    arr, header_affine = read_nifti(path)
    channel_axis = _mask_layout(arr.shape, display_path(path))[1]
    if channel_axis is None:
        arr = arr[None]
    elif channel_axis == 3:
        arr = np.moveaxis(arr, 3, 0)
    else:
        header_affine = None
    affine = affine_from_metadata(meta) if meta is not None else header_affine
    mask = arr > 0
    if affine is None:
        return mask
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(AXCODES))
    )
    return np.stack([nib.orientations.apply_orientation(m, ornt) for m in mask]).astype(bool)


def _mask_layout(shape: Sequence[int], where: str) -> tuple[tuple[int, int, int], int | None]:
    """A stored lesion mask's spatial (X, Y, Z) and channel axis (None: 3D, one channel; else 0 or 3, the smaller)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2]), None
    if len(shape) == 4:
        return ((shape[0], shape[1], shape[2]), 3) if shape[3] < shape[0] else ((shape[1], shape[2], shape[3]), 0)
    raise BadSampleError(f"{where}: expected a 3D or 4D mask, got shape {shape}")


def lps_grid(shape: Sequence[int], affine: np.ndarray) -> tuple[int, int, int]:
    """The (X, Y, Z) a stored grid of ``shape`` has once reoriented to LPS with ``affine``, as the loaders do."""
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(AXCODES))
    )
    out = [0, 0, 0]
    for axis, size in zip(ornt[:, 0].astype(int), shape, strict=True):
        out[axis] = int(size)
    return out[0], out[1], out[2]


def mask_grid_of(path: str | Path, meta: Mapping[str, Any]) -> tuple[int, int, int]:
    """The LPS (X, Y, Z) of a lesion mask as ``load_lesion_mask(path, meta)`` returns it, from its header alone."""
    with reading(path, "NIfTI header"):
        shape = nib.load(str(path)).shape  # the header only: nibabel decodes voxels lazily
    return lps_grid(_mask_layout(shape, display_path(path))[0], affine_from_metadata(meta))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of a 2D/3D bool mask -> (labels 1..n in raster order of first pixel, n)."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool))
    return labels, int(n)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a bool mask (the first of equal ones; empty in, empty out)."""
    labels, n = label_components(mask)
    if n == 0:
        return np.asarray(mask, dtype=bool)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def lung_mask_from_hu(slice_hu: np.ndarray, threshold: float = -400.0, keep: int = 2) -> np.ndarray:
    """Lung fields of an axial HU slice: low-density components not touching the border, largest ``keep``.

    Air outside the body touches the image border, so dropping border components leaves the lungs
    (and small airways, which the size ranking removes). Components under 0.2% of the slice are noise.
    """
    low = np.asarray(slice_hu) < threshold
    labels, n = label_components(low)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[border] = 0
    sizes[0] = 0
    order = [c for c in np.argsort(sizes)[::-1][:keep] if sizes[c] >= 0.002 * low.size]
    return np.isin(labels, order)


def bbox_of(mask2d: np.ndarray) -> list[int]:
    """[x0, y0, x1, y1] of a 2D mask: x = column, y = row, exclusive ends."""
    rows = np.flatnonzero(np.asarray(mask2d).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask2d).any(axis=0))
    if rows.size == 0:
        raise BadSampleError("bbox_of: the mask is empty")
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
