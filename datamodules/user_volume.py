"""A user's own CT for one-shot inference (``cli.py ask``): NIfTI file or DICOM series folder -> HU/LPS.

Same conventions as ``datamodules/ctrate.py``: float32 HU ``MetaTensor`` (1, X, Y, Z) in LPS index order,
``axial_slice`` for display, boxes ``[x0, y0, x1, y1]`` in display coordinates with exclusive ends, and
``BadSampleError`` naming the file and the problem for anything the user can fix. The volume and mask checks are
the training loaders' own (``datamodules/data_checks.py``): the same rule for what a 3D volume is, values that are
finite and plausible HU, a mask on the CT's grid, and a read failure named by its file whenever it happens (nibabel
and pydicom decode voxels lazily, after the header).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation
from pydicom.errors import InvalidDicomError

from datamodules.ctrate import AXCODES, BadSampleError, axial_slice, bbox_of, display_path, lung_mask_from_hu
from datamodules.data_checks import check_mask_grid, check_volume, reading, volume_shape

NIFTI_SUFFIXES = (".nii", ".nii.gz")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# A gap this far (relative) from the median slice gap means a missing or extra slice, not rounding noise.
SLICE_GAP_TOLERANCE = 0.1


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


def _floats(ds: pydicom.Dataset, field: str, n: int, file: Path) -> np.ndarray:
    value = ds.get(field)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadSampleError(f"{display_path(file)}: DICOM field '{field}' {value!r} is not a list of numbers") from e
    if out.shape != (n,):
        raise BadSampleError(f"{display_path(file)}: DICOM field '{field}' {value!r} needs {n} numbers")
    return out


def _groups_text(groups: dict[Hashable, list[Path]]) -> str:
    parts = []
    for key, files in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        noun = "file" if len(files) == 1 else "files"
        parts.append(f"{key} ({len(files)} {noun}, e.g. {sorted(files)[0].name})")
    return ", ".join(parts)


def _check_one(
    headers: list[tuple[Path, pydicom.Dataset]],
    where: str,
    what: str,
    key: Callable[[Path, pydicom.Dataset], Hashable],
) -> None:
    groups: dict[Hashable, list[Path]] = defaultdict(list)
    for file, ds in headers:
        groups[key(file, ds)].append(file)
    if len(groups) > 1:
        raise BadSampleError(f"{where}: mixed DICOM series, different {what}: {_groups_text(groups)}")


def _dicom_headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    where = display_path(folder)
    headers, not_dicom, no_position = [], 0, 0
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except InvalidDicomError:  # stray files (README, .DS_Store, ...) sit next to many exported series
            not_dicom += 1
            continue
        except Exception as e:  # a truncated/corrupt slice must not vanish silently from the volume
            raise BadSampleError(f"{display_path(file)}: cannot read DICOM ({type(e).__name__}: {e})") from e
        if "ImagePositionPatient" not in ds:  # DICOMDIR, reports, enhanced multi-frame files
            no_position += 1
            continue
        headers.append((file, ds))
    if not headers:
        raise BadSampleError(
            f"{where}: no DICOM slices with ImagePositionPatient ({not_dicom} non-DICOM file(s), {no_position} DICOM "
            "file(s) without ImagePositionPatient; multi-frame DICOM is not supported, convert it to NIfTI)"
        )
    return headers


def _load_dicom_series(folder: Path) -> MetaTensor:
    where = display_path(folder)
    headers = _dicom_headers(folder)
    _check_one(headers, where, "SeriesInstanceUID", lambda f, ds: str(ds.get("SeriesInstanceUID", "(none)")))
    _check_one(headers, where, "Rows x Columns", lambda f, ds: f"{ds.get('Rows')}x{ds.get('Columns')}")
    # Rounded so that float noise in the headers does not split one series into many groups.
    for field, n in (("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
        _check_one(headers, where, field, lambda f, ds, fd=field, n=n: str(np.round(_floats(ds, fd, n, f), 3).tolist()))

    first = headers[0][1]
    iop = _floats(first, "ImageOrientationPatient", 6, headers[0][0])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    row_spacing, col_spacing = _floats(first, "PixelSpacing", 2, headers[0][0])
    # Sorting by the position along the slice normal is what defines the slice order; file names and
    # InstanceNumber are not reliable across exporters.
    positions = {file: _floats(ds, "ImagePositionPatient", 3, file) for file, ds in headers}
    headers.sort(key=lambda h: float(positions[h[0]] @ normal))
    along = np.array([positions[file] @ normal for file, _ in headers])

    if len(headers) > 1:
        gaps = np.diff(along)
        k = int(np.argmin(gaps))
        if gaps[k] < 1e-4:
            a, b = headers[k][0].name, headers[k + 1][0].name
            raise BadSampleError(f"{where}: slices {a} and {b} are at the same position (more than one series?)")
        # Projected gap, not Euclidean distance: with gantry tilt the positions are sheared along the
        # rows, and the voxel spacing is the step along the normal.
        slice_spacing = float(np.median(gaps))
        k = int(np.argmax(np.abs(gaps - slice_spacing)))
        if abs(gaps[k] - slice_spacing) > SLICE_GAP_TOLERANCE * slice_spacing:
            a, b = headers[k][0].name, headers[k + 1][0].name
            raise BadSampleError(
                f"{where}: uneven slice spacing, {gaps[k]:.3g} mm between {a} and {b} where the rest are "
                f"{slice_spacing:.3g} mm (missing slices?)"
            )
    else:
        slice_spacing = float(first.get("SliceThickness") or 1.0)

    with reading(headers[0][0], "DICOM"):  # Rows/Columns missing or malformed
        rows, cols = int(first.Rows), int(first.Columns)
    hu = np.empty((cols, rows, len(headers)), dtype=np.float32)
    for k, (file, _) in enumerate(headers):
        try:
            ds = pydicom.dcmread(file)
        except Exception as e:  # the file changed or vanished since the header pass
            raise BadSampleError(f"{display_path(file)}: cannot read DICOM ({type(e).__name__}: {e})") from e
        try:
            pixels = ds.pixel_array
        except Exception as e:  # compressed syntaxes without an installed decoder, truncated pixel data, ...
            syntax = ds.file_meta.get("TransferSyntaxUID", "?")
            raise BadSampleError(
                f"{display_path(file)}: cannot decode DICOM pixel data (transfer syntax {syntax}; "
                f"{type(e).__name__}: {e})"
            ) from e
        if pixels.shape != (rows, cols):
            raise BadSampleError(f"{display_path(file)}: pixel data shape {pixels.shape}, expected ({rows}, {cols})")
        with reading(file, "DICOM"):  # pydicom parses a value when it is first read
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        # pydicom gives (rows, cols); array axis 0 must be the column index (along the row cosine).
        hu[:, :, k] = pixels.T.astype(np.float32) * slope + intercept

    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = positions[headers[0][0]]
    check_volume(hu, folder)
    return _to_lps(hu, LPS_TO_RAS @ lps)


def load_user_volume(path: str | Path) -> MetaTensor:
    """HU volume as float32 MetaTensor (1, X, Y, Z) in LPS from a NIfTI file or a DICOM series folder."""
    path = Path(path)
    where = display_path(path)
    if not path.exists():
        raise BadSampleError(f"{where}: file or folder not found")
    if path.is_dir():
        vol = _load_dicom_series(path)
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
