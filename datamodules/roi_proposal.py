"""What an ROI source is asked (``ROIQuery``), what it answers (``ROIProposal``), and the check of every answer.

Sources are in ``datamodules/roi_sources.py``; boxes are ``[x0, y0, x1, y1]`` display pixels of
``axial_slice(volume, slice_index)``, exclusive ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.boxes import box_problem
from datamodules.ctrate import BadSampleError


@dataclass(frozen=True)
class ROIProposal:
    """Slice and boxes to zoom into, the source that made them and the region they show."""

    slice_index: int
    boxes: list[list[int]]
    source: str
    region: str


@dataclass
class ROIQuery:
    """What a source may look at: the volume (1, X, Y, Z) HU in LPS, its CT-RATE row, the abnormality asked about,
    the region the report names for it, and the finding's lesion mask (X, Y, Z) when the builder has one."""

    volume: torch.Tensor
    volume_name: str
    row: Mapping[str, Any]
    root: Path
    label: str
    region: str = "lungs"
    lesion: np.ndarray | None = None


def check_proposal(p: ROIProposal, volume: torch.Tensor, where: str) -> ROIProposal:
    """The proposal itself, if its slice is in the volume and every box is non-empty and inside the slice."""
    width, height, depth = (int(v) for v in volume.shape[-3:])
    if not 0 <= p.slice_index < depth:
        raise BadSampleError(f"{where}: {p.source} ROI slice {p.slice_index} is outside 0..{depth - 1}")
    if not p.boxes:
        raise BadSampleError(f"{where}: {p.source} ROI has no box")
    for box in p.boxes:
        problem = box_problem(box, height, width)
        if problem is not None:
            raise BadSampleError(f"{where}: {p.source} ROI box {problem}")
    return p
