"""The data checks, one set: every reader applies them when it reads, and ``check_data`` runs them over a whole data
set ahead of time, so the two can never disagree.

Each check returns its problems, ``(line, field, message)`` for a CSV or a message for a file, and ``raise_first``
turns the first into a ``BadSampleError`` naming file, line and field:
``dataset/metadata/train_metadata.csv:5: field 'RescaleSlope': 0 is not a non-zero number``.
Rows read from a CSV carry where they came from in ``WHERE`` (``"<file>:<line>"``), as VQA records carry ``_where``.
"""

from __future__ import annotations

import ast
import csv
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

# HU plausibility of a volume once it is HU (after the loaders' raw-or-HU detection and rescale).
# A chest CT always holds air (around the body, in the lungs): no voxel under AIR_HU means the values are not HU,
# typically raw stored values whose RescaleSlope/RescaleIntercept are wrong or missing.
AIR_HU = -500.0
# Scanners pad outside the field of view with -3024 HU (-1024 - 2000) at the lowest; lower means mis-scaled.
MIN_HU = -3100.0
# Dense bone is ~2000 HU and the standard 12-bit scale ends at 3071; higher means a wrong slope (extended-scale
# metal reconstructions can exceed it: look at such a volume before dropping it).
MAX_HU = 5000.0
SPLITS = ("train", "valid")
VOLUME_NAME_RE = re.compile(r"^([a-z]+)_(\d+)_([a-z]+)_(\d+)\.nii\.gz$")
WHERE = "_where"  # a CSV row's "<file>:<line>", set by the readers; never a column of the files themselves
CSVProblem = tuple[int, str, str]  # (1-based line, field, message)


class BadSampleError(ValueError):
    """A data problem the user can fix; the message names the file, the line (if any) and the field."""


def display_path(path: str | Path) -> str:
    """Path from the dataset-level folder on (``dataset/...``, ``rexgroundingct/...``), else as given."""
    parts = Path(path).parts
    for anchor in ("dataset", "rexgroundingct", "vqa"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) :])
    return str(path)


def raise_first(where: str, problems: Sequence[tuple[str | None, str]]) -> None:
    """Raise ``BadSampleError("<where>: field '<f>': <message>")`` for the first (field, message), if any."""
    if problems:
        name, message = problems[0]
        raise BadSampleError(f"{where}: {message}" if name is None else f"{where}: field '{name}': {message}")


@contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Any failure inside the block (header or deferred voxel decoding) as ``<file>: cannot read <what> (...)``.

    nibabel and pydicom read headers eagerly and voxels on first access, so the access must be inside the block too.
    """
    try:
        yield
    except BadSampleError:
        raise
    except Exception as e:  # gzip, zlib, nibabel, pydicom, numpy raise many types for corrupt files; all mean this
        raise BadSampleError(f"{display_path(path)}: cannot read {what} ({type(e).__name__}: {e})") from e


def volume_shape(shape: Sequence[int], where: str, what: str = "CT volume") -> tuple[int, int, int]:
    """The (X, Y, Z) of a stored volume: 3D, or 4D with one volume on the last axis (ANTs and others write
    ``(X, Y, Z, 1)``), as nibabel users read it; anything else raises."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise BadSampleError(f"{where}: expected a 3D {what}, got shape {shape}")
    return shape[0], shape[1], shape[2]


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (pandas reads an empty cell as NaN)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def numbers(value: Any, n: int) -> list[float] | None:
    """A list of ``n`` finite numbers, from a list or its text (``"[0.75, 0.75]"``, as CT-RATE stores them)."""
    try:
        items = ast.literal_eval(value) if isinstance(value, str) else list(value)
        out = [number(v) for v in items]
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return out if len(out) == n and None not in out else None  # type: ignore[return-value]


def geometry_problems(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each metadata field the loaders cannot place or rescale a volume with."""
    out = []
    slope, intercept, z = (number(row.get(k)) for k in ("RescaleSlope", "RescaleIntercept", "ZSpacing"))
    if slope is None or slope == 0:
        out.append(("RescaleSlope", f"{row.get('RescaleSlope')!r} is not a non-zero number"))
    if intercept is None:
        out.append(("RescaleIntercept", f"{row.get('RescaleIntercept')!r} is not a number"))
    if z is None or z <= 0:
        out.append(("ZSpacing", f"{row.get('ZSpacing')!r} is not a positive number"))
    for name, n in (("XYSpacing", 2), ("ImagePositionPatient", 3), ("ImageOrientationPatient", 6)):
        values = numbers(row.get(name), n)
        if values is None:
            out.append((name, f"{row.get(name)!r} is not a list of {n} numbers"))
        elif name == "XYSpacing" and min(values) <= 0:
            out.append((name, f"{row.get(name)!r} has a non-positive spacing"))
        elif name == "ImageOrientationPatient" and np.linalg.norm(np.cross(values[:3], values[3:])) < 1e-3:
            out.append((name, f"{row.get(name)!r}: the row and column directions are parallel or zero"))
    return out


def row_where(row: Mapping[str, Any]) -> str:
    """Where a metadata row came from: its ``WHERE`` tag, else the volume it describes."""
    return str(row.get(WHERE) or f"metadata of {row.get('VolumeName', '?')}")


def check_geometry(row: Mapping[str, Any]) -> None:
    """Raise for the first ``geometry_problems`` of a metadata row, naming its CSV line and field."""
    raise_first(row_where(row), geometry_problems(row))


def hu_problems(volume: torch.Tensor | np.ndarray) -> list[str]:
    """Why a volume's values do not look like CT in HU (empty when they do). Two passes (min, max), no copy:
    both propagate NaN, and an infinity is its own min or max."""
    if (volume.numel() if isinstance(volume, torch.Tensor) else volume.size) == 0:
        return ["holds no voxels"]
    low, high = float(volume.min()), float(volume.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        return ["holds NaN or infinite values"]
    out = []
    if low > AIR_HU:
        out.append(f"no voxel below {AIR_HU:g} HU (min {low:g}): no air, so not HU (raw values never rescaled?)")
    if low < MIN_HU:
        out.append(f"min {low:g} HU is below {MIN_HU:g}: not CT in HU")
    if high > MAX_HU:
        out.append(f"max {high:g} HU is above {MAX_HU:g}: not CT in HU")
    return out


def volume_problem(volume: torch.Tensor | np.ndarray, row: Mapping[str, Any] | None = None) -> str | None:
    """Why a loaded HU volume cannot be used (None when it can); names the metadata row that scaled it, if any."""
    found = hu_problems(volume)
    if not found:
        return None
    if found == ["holds NaN or infinite values"]:
        bad = int((~np.isfinite(np.asarray(volume))).sum())
        return f"holds NaN or infinite values ({bad} of {np.asarray(volume).size} voxels; outside the field of view?)"
    scale = f"; check the file's scaling and {row_where(row)}" if row is not None else "; check the file's scaling"
    if row is not None:
        scale += f": RescaleSlope {row.get('RescaleSlope')}, RescaleIntercept {row.get('RescaleIntercept')}"
    return "; ".join(found) + scale


def check_volume(volume: torch.Tensor | np.ndarray, path: str | Path, row: Mapping[str, Any] | None = None) -> None:
    """Raise ``<file>: <volume_problem>`` for a volume that is not CT in HU."""
    problem = volume_problem(volume, row)
    if problem is not None:
        raise BadSampleError(f"{display_path(path)}: {problem}")


def check_mask_grid(path: str | Path, mask_grid: Sequence[int], ct_grid: Sequence[int]) -> None:
    """A mask must lie on its CT's voxel grid (same LPS (X, Y, Z)), or its boxes point at other anatomy."""
    if tuple(mask_grid) != tuple(ct_grid):
        raise BadSampleError(f"{display_path(path)}: mask grid {tuple(mask_grid)} differs from the CT {tuple(ct_grid)}")


def record_lines(path: str | Path) -> list[int]:
    """The line each CSV record starts on (header first); quoted fields may span lines, so not simply i + 2."""
    starts: list[int] = []
    with Path(path).open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        before = 0
        for record in reader:
            if record:  # pandas skips blank lines too
                starts.append(before + 1)
            before = reader.line_num
    return starts


def row_lines(path: str | Path, rows: int) -> list[int]:
    """The CSV line of each of a ``pd.read_csv`` frame's ``rows`` rows."""
    starts = record_lines(path)
    if len(starts) != rows + 1:  # the two parsers disagree (unusual quoting): count lines as pandas would
        starts = list(range(1, rows + 2))
    return starts[1:]


def duplicate_problems(keys: Sequence[Any], lines: Sequence[int], field: str = "VolumeName") -> list[CSVProblem]:
    """One problem per repeat of a key that must be unique (a join on it would double rows), at the repeat's line."""
    first: dict[Any, int] = {}
    out = []
    for key, line in zip(keys, lines, strict=True):
        if isinstance(key, float) and math.isnan(key):
            continue  # a missing key is its own problem
        if key in first:
            out.append((line, field, f"{key!r} is listed again (first on line {first[key]})"))
        else:
            first[key] = line
    return out


def name_problems(keys: Sequence[Any], lines: Sequence[int], split: str | None = None) -> list[CSVProblem]:
    """VolumeNames that name no CT-RATE volume of a known split (the loaders find files and splits by name), or,
    with ``split``, a volume of another split than the table's (its row would override that split's own row, and
    its patient would sit in two splits)."""
    out = []
    for key, line in zip(keys, lines, strict=True):
        m = VOLUME_NAME_RE.match(key) if isinstance(key, str) else None
        if not isinstance(key, str):
            out.append((line, "VolumeName", "missing"))
        elif m is None:
            out.append((line, "VolumeName", f"{key!r} does not match '<split>_<patient>_<scan>_<recon>.nii.gz'"))
        elif m.group(1) not in SPLITS:
            out.append((line, "VolumeName", f"{key!r}: split {m.group(1)!r} is not one of {SPLITS}"))
        elif split is not None and m.group(1) != split:
            out.append(
                (line, "VolumeName", f"{key!r} is a volume of split {m.group(1)!r}, not of this table's {split!r}")
            )
    return out


def unknown_problems(keys: Sequence[Any], lines: Sequence[int], known: set[str], table: str) -> list[CSVProblem]:
    """Keys with no row in ``table`` (whose keys are ``known``): a join on them would leave the row's fields empty."""
    return [
        (line, "VolumeName", f"{key!r} has no row in {table}")
        for key, line in zip(keys, lines, strict=True)
        if isinstance(key, str) and key not in known
    ]


def label_problems(frame: pd.DataFrame, lines: Sequence[int], labels: Sequence[str]) -> list[CSVProblem]:
    """Label cells that are not 0 or 1, by line then column. Judged by number: one bad cell makes pandas read its
    whole column as text, and only the cells to fix are reported."""
    out = []
    for col in (c for c in labels if c in frame.columns):
        bad = ~pd.to_numeric(frame[col], errors="coerce").isin([0, 1])
        values = frame[col].tolist()  # Python scalars: their repr is the cell as written (2, not np.int64(2))
        out += [(lines[i], col, f"must be 0 or 1, got {values[i]!r}") for i in np.flatnonzero(bad)]
    return sorted(out, key=lambda p: (p[0], list(labels).index(p[1])))


def raise_csv(path: str | Path, problems: Sequence[CSVProblem]) -> None:
    """Raise ``<file>:<line>: field '<f>': <message>`` for the first CSV problem, if any."""
    if problems:
        line, name, message = problems[0]
        raise_first(f"{display_path(path)}:{line}", [(name, message)])
