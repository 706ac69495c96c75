"""Volume and metadata checks: a 3D shape, placeable geometry, values that are CT in HU, a mask on its CT's grid.

``*_problems`` return what is wrong (empty when nothing is); ``check_*`` raise the first as a ``BadSampleError``
naming the file or the metadata row's CSV line and field.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.data_checks.errors import WHERE, BadSampleError, display_path, raise_first

# HU plausibility of a volume once it is HU (after the loaders' raw-or-HU detection and rescale).
# A chest CT always holds air (around the body, in the lungs): no voxel under AIR_HU means the values are not HU,
# typically raw stored values whose RescaleSlope/RescaleIntercept are wrong or missing.
AIR_HU = -500.0
# Scanners pad outside the field of view with -3024 HU (-1024 - 2000) at the lowest; lower means mis-scaled.
MIN_HU = -3100.0
# Dense bone is ~2000 HU and the standard 12-bit scale ends at 3071; higher means a wrong slope (extended-scale
# metal reconstructions can exceed it: look at such a volume before dropping it).
MAX_HU = 5000.0


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
