"""CT-RATE volumes: metadata affine, raw-or-HU detection, the HU/LPS loader, its cache and the axial display slice.

Canonical orientation is MONAI/nibabel ``LPS`` (see the package docstring); ``AXCODES`` names it for every loader.
"""

from __future__ import annotations

import ast
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import Orientation

from datamodules.ctrate.paths import CTRATEPaths, parse_volume_name
from datamodules.data_checks.errors import BadSampleError, display_path, reading
from datamodules.data_checks.tables import SPLITS
from datamodules.data_checks.volumes import check_geometry, check_volume, volume_shape

AXCODES = "LPS"


def list_field(meta: Mapping[str, Any], field: str, n: int) -> list[float]:
    """Metadata ``field`` as ``n`` floats, from a list or its text (``"[0.75, 0.75]"``); else ``BadSampleError``."""
    value = meta.get(field)
    try:
        items = ast.literal_eval(value) if isinstance(value, str) else list(value)
        out = [float(v) for v in items]
    except (ValueError, SyntaxError, TypeError) as e:
        raise BadSampleError(f"{meta.get('VolumeName', '?')}: field '{field}' {value!r} is not a list") from e
    if len(out) != n:
        raise BadSampleError(f"{meta.get('VolumeName', '?')}: field '{field}' {value!r} needs {n} numbers")
    return out


def affine_from_metadata(meta: Mapping[str, Any]) -> np.ndarray:
    """RAS voxel-to-world affine rebuilt from CT-RATE metadata, exactly as CT-RATE's fix_metadata.py does.

    fix_metadata.py (SimpleITK) sets spacing (XYSpacing, ZSpacing), origin = ImagePositionPatient and
    direction = [row cosine, column cosine, row x column]: array axis 0 follows the DICOM row direction
    (columns), axis 1 the column direction (rows), axis 2 the slice normal, all in DICOM LPS world
    coordinates. The public "non-standard affine" check of CT-RATE in OMASeg builds the same matrix and
    flips the first two world rows to go from LPS to RAS, which is what nibabel/MONAI expect.
    """
    sx, sy = list_field(meta, "XYSpacing", 2)
    try:
        sz = float(meta["ZSpacing"])
    except (KeyError, TypeError, ValueError) as e:
        raise BadSampleError(f"{meta.get('VolumeName', '?')}: field 'ZSpacing' is not a number") from e
    iop = np.array(list_field(meta, "ImageOrientationPatient", 6))
    origin = np.array(list_field(meta, "ImagePositionPatient", 3))
    row, col = iop[:3], iop[3:]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * sx, col * sy, np.cross(row, col) * sz
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def looks_raw(arr: np.ndarray, slope: float, intercept: float) -> bool:
    """Whether ``arr`` still holds raw stored values (HU = raw*slope + intercept) rather than HU.

    fix_metadata.py writes HU as int16, but raw downloads hold stored values (air ~ 0..50 for intercept
    -1024). We count voxels that would be air (-1100..-900 HU) under each reading and keep the reading
    with the bigger air peak; unlike a min() test this ignores out-of-field padding (-2000, -3024).
    """
    if slope == 1.0 and intercept == 0.0:
        return False
    sample = arr[::2, ::2, ::2].astype(np.float32)
    air_as_hu = np.count_nonzero((sample > -1100) & (sample < -900))
    rescaled = sample * slope + intercept
    air_as_raw = np.count_nonzero((rescaled > -1100) & (rescaled < -900))
    return air_as_raw > air_as_hu


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (decoded here, inside the error handler) and header affine (4, 4) of a NIfTI file.

    Raises ``BadSampleError`` naming the file when it is missing or cannot be read or decoded.
    """
    if not path.is_file():
        raise BadSampleError(f"{display_path(path)}: file not found")
    with reading(path, "NIfTI"):
        # The reader itself, not LoadImage: LoadImage builds every MONAI reader per call, and with pydicom
        # installed the DICOM one logs an nvImageCodec warning each time.
        reader = NibabelReader()
        arr, meta = reader.get_data(reader.read(str(path)))
        return np.asarray(arr), np.asarray(meta["affine"])


def load_ct_volume(path: str | Path, meta: Mapping[str, Any]) -> MetaTensor:
    """HU volume as float32 MetaTensor (1, X, Y, Z) in LPS, for raw and for fixed CT-RATE files alike.

    The header affine is ignored (raw downloads carry a meaningless one); geometry comes from ``meta``
    (one metadata CSV row). Rescaling is applied only when ``looks_raw`` says the data are not HU yet.
    ``(X, Y, Z, 1)`` files are the 3D volume they hold (``volume_shape``).

    Raises ``BadSampleError`` for the ``data_checks`` problems: the metadata row's geometry (naming its CSV line and
    field), a file that cannot be read, or values that are not CT in HU (NaN, no air, out of range; naming the file).
    """
    path = Path(path)
    check_geometry(meta)
    arr, _ = read_nifti(path)
    arr = arr.reshape(volume_shape(arr.shape, display_path(path)))
    slope, intercept = float(meta["RescaleSlope"]), float(meta["RescaleIntercept"])
    hu = arr.astype(np.float32)
    if looks_raw(arr, slope, intercept):
        hu = hu * slope + intercept
    check_volume(hu, path, meta)
    vol = MetaTensor(torch.from_numpy(hu[None]), affine=torch.as_tensor(affine_from_metadata(meta)))
    return Orientation(axcodes=AXCODES, labels=(("L", "R"), ("P", "A"), ("I", "S")))(vol).float()


class VolumeCache:
    """Decoded CT volumes by VolumeName, the least recently used dropped first: several questions (or epochs)
    share one volume, and decoding a real CT-RATE volume takes seconds."""

    def __init__(self, root: str | Path, size: int) -> None:
        self.paths = {split: CTRATEPaths(Path(root), split) for split in SPLITS}
        self.size = size
        self._volumes: OrderedDict[str, MetaTensor] = OrderedDict()

    def path(self, volume_name: str) -> Path:
        """Where the volume's NIfTI file is (whether or not it exists)."""
        return self.paths[parse_volume_name(volume_name)[0]].volume(volume_name)

    def get(self, volume_name: str, meta: Mapping[str, Any] | None) -> MetaTensor:
        """The volume as ``load_ct_volume`` returns it; ``meta`` is its metadata row (None: the row is missing)."""
        if volume_name in self._volumes:
            self._volumes.move_to_end(volume_name)
            return self._volumes[volume_name]
        paths = self.paths[parse_volume_name(volume_name)[0]]
        if meta is None:
            raise BadSampleError(f"{display_path(paths.metadata_csv)}: no row for VolumeName {volume_name!r}")
        volume = load_ct_volume(paths.volume(volume_name), meta)
        self._volumes[volume_name] = volume
        if len(self._volumes) > self.size:
            self._volumes.popitem(last=False)
        return volume


def axial_slice(vol: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """The display image (rows=Y, cols=X) of axial slice ``k`` of an LPS (1, X, Y, Z) volume, float32 HU."""
    arr = vol.detach().cpu().numpy() if isinstance(vol, torch.Tensor) else np.asarray(vol)
    if not 0 <= k < arr.shape[-1]:
        raise BadSampleError(f"slice index {k} is outside 0..{arr.shape[-1] - 1}")
    return np.ascontiguousarray(arr[0, :, :, k].T, dtype=np.float32)
