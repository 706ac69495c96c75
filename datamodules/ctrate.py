"""CT-RATE and ReXGroundingCT readers: the one loading path for real and synthetic data.

Canonical orientation everywhere is MONAI/nibabel ``LPS``: voxel index i grows towards the patient's
Left, j towards Posterior, k towards Superior. ``axial_slice(vol, k)`` is then ``vol[0, :, :, k].T``:
rows = j (anterior at the top), columns = i (patient's right on the image's left, radiological view).
"""

from __future__ import annotations

import ast
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import Orientation
from scipy import ndimage

from datamodules.data_checks import (
    SPLITS,
    VOLUME_NAME_RE,
    WHERE,
    BadSampleError,
    check_geometry,
    check_volume,
    display_path,
    duplicate_problems,
    label_problems,
    name_problems,
    raise_csv,
    reading,
    row_lines,
    unknown_problems,
    volume_shape,
)

CTRATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
# The metadata fields the loader needs; real CT-RATE metadata has many more columns.
GEOMETRY_COLUMNS = (
    "VolumeName",
    "RescaleSlope",
    "RescaleIntercept",
    "XYSpacing",
    "ZSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)
AXCODES = "LPS"


def parse_volume_name(name: str) -> tuple[str, int, str, int]:
    """``train_12_a_1.nii.gz`` -> ("train", 12, "a", 1)."""
    m = VOLUME_NAME_RE.match(name)
    if m is None:
        raise BadSampleError(f"VolumeName {name!r} does not match '<split>_<patient>_<scan>_<recon>.nii.gz'")
    return m.group(1), int(m.group(2)), m.group(3), int(m.group(4))


def patient_id(name: str) -> str:
    split, pid, _, _ = parse_volume_name(name)
    return f"{split}_{pid}"


@dataclass(frozen=True)
class CTRATEPaths:
    """Where CT-RATE (and ReXGroundingCT) files live under ``root`` for one split.

    ``root/dataset/...`` mirrors the CT-RATE Hugging Face repo; ``root/rexgroundingct/`` mirrors the
    ReXGroundingCT repo (``dataset.json`` + ``segmentations/<VolumeName>``).
    """

    root: Path
    split: str = "train"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise BadSampleError(f"split {self.split!r} is not one of {SPLITS}")
        object.__setattr__(self, "root", Path(self.root))

    @property
    def _csv_stem(self) -> str:
        # CT-RATE names its validation tables inconsistently: validation_* vs valid_*.
        return "train" if self.split == "train" else "validation"

    @property
    def metadata_csv(self) -> Path:
        return self.root / "dataset" / "metadata" / f"{self._csv_stem}_metadata.csv"

    @property
    def reports_csv(self) -> Path:
        return self.root / "dataset" / "radiology_text_reports" / f"{self._csv_stem}_reports.csv"

    @property
    def labels_csv(self) -> Path:
        return self.root / "dataset" / "multi_abnormality_labels" / f"{self.split}_predicted_labels.csv"

    def volume(self, volume_name: str) -> Path:
        split, pid, scan, _ = parse_volume_name(volume_name)
        folder = self.root / "dataset" / split / f"{split}_{pid}" / f"{split}_{pid}_{scan}"
        return folder / volume_name

    @property
    def grounding_json(self) -> Path:
        return self.root / "rexgroundingct" / "dataset.json"

    def lesion_mask(self, volume_name: str) -> Path:
        return self.root / "rexgroundingct" / "segmentations" / volume_name

    def region_mask(self, volume_name: str, structure: str, regions_dir: str = "totalsegmentator") -> Path:
        """One organ/region mask as TotalSegmentator writes them: ``<regions_dir>/<volume stem>/<structure>.nii.gz``
        (``regions_dir`` relative to the root unless absolute)."""
        stem = volume_name.removesuffix(".nii.gz")
        return self.root / regions_dir / stem / f"{structure}.nii.gz"


def read_csv_checked(path: str | Path, required_columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV; a missing file, unreadable CSV or missing column raises ``BadSampleError``."""
    where = display_path(path)
    if not Path(path).is_file():
        raise BadSampleError(f"{where}: file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BadSampleError(f"{where}: cannot parse CSV ({e})") from e
    for col in required_columns:
        if col not in df.columns:
            raise BadSampleError(f"{where}: missing column '{col}'")
    return df


def read_table(path: str | Path, required_columns: Sequence[str], split: str) -> tuple[pd.DataFrame, list[int]]:
    """A CT-RATE table keyed by VolumeName, and each row's CSV line; every row's ``WHERE`` says ``<file>:<line>``.

    Raises ``BadSampleError`` naming file, line and field for a VolumeName that is missing, names no CT-RATE
    volume of ``split``, or is listed again (a join on it would double that volume's rows), as ``check_data``
    reports them.
    """
    df = read_csv_checked(path, ("VolumeName", *required_columns))
    lines = row_lines(path, len(df))
    names = df["VolumeName"].tolist()
    raise_csv(path, name_problems(names, lines, split) + duplicate_problems(names, lines))
    df[WHERE] = [f"{display_path(path)}:{line}" for line in lines]
    return df, lines


def read_metadata(root: str | Path, split: str) -> dict[str, dict[str, Any]]:
    """A split's metadata rows by VolumeName (with ``WHERE``); geometry is checked per volume, when it is loaded."""
    frame, _ = read_table(CTRATEPaths(Path(root), split).metadata_csv, GEOMETRY_COLUMNS, split)
    return {row["VolumeName"]: row for row in frame.to_dict(orient="records")}


def read_split(root: str | Path, split: str) -> pd.DataFrame:
    """Metadata joined with the 18 labels (and reports when present), one row per volume, sorted by name.

    Each row's ``WHERE`` is its metadata line (the loaders name it for a geometry problem). Raises
    ``BadSampleError`` (``<file>:<line>: field '<f>': ...``) for the ``read_table`` problems of any of the three
    tables, a label that is not 0 or 1, or a labelled volume without a metadata row.
    """
    paths = CTRATEPaths(Path(root), split)
    meta, _ = read_table(paths.metadata_csv, GEOMETRY_COLUMNS, split)
    labels, lines = read_table(paths.labels_csv, CTRATE_LABELS, split)
    raise_csv(paths.labels_csv, label_problems(labels, lines, CTRATE_LABELS))
    table = display_path(paths.metadata_csv)
    raise_csv(paths.labels_csv, unknown_problems(labels["VolumeName"].tolist(), lines, set(meta["VolumeName"]), table))
    df = labels.drop(columns=[WHERE]).merge(meta, on="VolumeName", how="left")
    if paths.reports_csv.is_file():
        reports, _ = read_table(paths.reports_csv, REPORT_COLUMNS, split)
        df = df.merge(reports[list(REPORT_COLUMNS)], on="VolumeName", how="left")
    return df.sort_values("VolumeName").reset_index(drop=True)


def list_field(meta: Mapping[str, Any], field: str, n: int) -> list[float]:
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


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (decoded here, inside the error handler) and header affine of a NIfTI file."""
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
    arr, _ = _read_nifti(path)
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


@dataclass(frozen=True)
class Finding:
    """One ReXGroundingCT finding: free text grounded by mask channel ``index``."""

    index: int
    text: str


def load_grounding(root: str | Path) -> dict[str, list[Finding]]:
    """``rexgroundingct/dataset.json`` as {VolumeName: findings sorted by channel}; {} if the file is absent.

    The release groups entries by split ({"train": [...], "val": [...], "test": [...]}), each entry
    ``{"name": "train_1741_b_2.nii.gz", "findings": {"0": "...", ...}}``; finding k is mask channel k.
    """
    path = CTRATEPaths(Path(root)).grounding_json
    if not path.is_file():
        return {}
    where = display_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadSampleError(f"{where}: not valid JSON ({e})") from e
    entries = [e for v in data.values() if isinstance(v, list) for e in v] if isinstance(data, dict) else data
    out: dict[str, list[Finding]] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("findings"), dict):
            raise BadSampleError(f"{where}: entry {n} needs fields 'name' and 'findings'")
        try:
            findings = [Finding(int(k), str(t)) for k, t in entry["findings"].items()]
        except ValueError as e:
            raise BadSampleError(f"{where}: entry {entry['name']!r} field 'findings' has a non-integer key") from e
        out[entry["name"]] = sorted(findings, key=lambda f: f.index)
    return out


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
    arr, header_affine = _read_nifti(path)
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
