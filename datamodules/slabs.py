"""Thin slab projections: several adjacent axial slices of a CT volume → one 2D HU image, before windowing.

As MONAI's ``array.py``/``dictionary.py`` pair: ``SlabProjection`` holds the maths, ``SlabProjectiond`` is the thin
loop over keys. A maximum intensity projection (MIP) keeps a nodule or a calcification that a single slice misses
between its neighbours; a mean projection averages noise away for soft-tissue findings (consolidation, effusion).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from datamodules.ctrate import BadSampleError

Projection = Literal["max", "mean"]
PROJECTIONS = ("max", "mean")


def slice_spacing(volume: object) -> float:
    """A volume's slice spacing in mm (a MONAI ``MetaTensor``'s ``pixdim[2]``, as ``load_ct_volume`` returns it);
    1.0 for an array without one."""
    pixdim = getattr(volume, "pixdim", None)
    return float(pixdim[2]) if pixdim is not None else 1.0


def slab_range(slice_index: int, depth: int, slab_mm: float, z_spacing: float) -> tuple[int, int]:
    """Slice indices ``[lo, hi)`` of the slab ``slab_mm`` thick (mm) around ``slice_index``: round(slab_mm /
    z_spacing) slices (at least one; an even count reaches one slice further up than down), moved inside the
    volume's ``depth`` slices at its ends, so a 10 mm slab is 10 slices of 1 mm or 2 of 5 mm."""
    n = min(max(1, int(round(slab_mm / z_spacing))), depth)
    lo = min(max(slice_index - (n - 1) // 2, 0), depth - n)
    return lo, lo + n


class SlabProjection(Transform):
    """A slab (…, Z) of slices → its projection along the last axis, (…): maximum or mean intensity.

    Args:
        mode: ``max`` (maximum intensity projection) or ``mean`` (average intensity projection).

    Raises ValueError for another mode or an empty slab.
    """

    def __init__(self, mode: Projection = "max") -> None:
        if mode not in PROJECTIONS:
            raise ValueError(f"slab projection mode {mode!r} is not one of {', '.join(PROJECTIONS)}")
        self.mode = mode

    def __call__(self, slab: np.ndarray | torch.Tensor) -> np.ndarray:
        arr = slab.detach().cpu().numpy() if isinstance(slab, torch.Tensor) else np.asarray(slab)
        if arr.shape[-1] == 0:
            raise ValueError("the slab holds no slice")
        out = arr.max(axis=-1) if self.mode == "max" else arr.mean(axis=-1, dtype=np.float64)
        return out.astype(np.float32)


class SlabProjectiond(MapTransform):
    """Dict version of `SlabProjection`: each of ``keys``, a slab (…, Z), → its projection (…)."""

    def __init__(self, keys: KeysCollection, mode: Projection = "max", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.projection = SlabProjection(mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.projection(d[key])
        return d


def axial_slab(volume: torch.Tensor | np.ndarray, slice_index: int, slab_mm: float, z_spacing: float,
               mode: Projection) -> np.ndarray:  # fmt: skip
    """The display image (rows = Y, cols = X) of the slab ``slab_mm`` thick around axial slice ``slice_index`` of
    an LPS (1, X, Y, Z) HU volume, projected by ``mode``; float32 HU. With ``slab_mm`` 0 it is ``axial_slice``.

    Raises BadSampleError when the slice is outside the volume."""
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    depth = arr.shape[-1]
    if not 0 <= slice_index < depth:
        raise BadSampleError(f"slice index {slice_index} is outside 0..{depth - 1}")
    lo, hi = slab_range(slice_index, depth, slab_mm, z_spacing)
    return np.ascontiguousarray(SlabProjection(mode)(arr[0, :, :, lo:hi]).T)
