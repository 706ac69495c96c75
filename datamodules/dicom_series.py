"""A DICOM series folder -> HU voxels and their RAS affine, with every series problem named by its file.

Written with pydicom rather than MONAI's ``PydicomReader``: that one orders slices by InstanceNumber, takes the slice
spacing from the mean step in z, and stacks a series with a missing slice or a stray scout without complaint. Here
slices are ordered by their position along the slice normal, and a mixed series, a repeated position or uneven
spacing is refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from datamodules.data_checks.errors import BadSampleError, display_path, reading
from datamodules.data_checks.volumes import check_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# A gap this far (relative) from the median slice gap means a missing or extra slice, not rounding noise.
SLICE_GAP_TOLERANCE = 0.1


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


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """One DICOM series folder as HU float32 (X, Y, Z) in the series' own index order and its RAS affine (4, 4).

    X follows the row cosine (DICOM columns), Y the column cosine (rows), Z the slice normal, slices sorted by
    their position along it. Raises ``BadSampleError`` naming the folder or file for: no slices, a mixed series
    (SeriesInstanceUID, size, orientation, pixel spacing), two slices at one position, uneven slice spacing,
    a slice that cannot be read or decoded, or values that are not CT in HU.
    """
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
    return hu, LPS_TO_RAS @ lps
