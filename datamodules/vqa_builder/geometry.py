"""Slice geometry of the questions: lesion boxes, best slice, heart box, sides, zones, and anatomy boxes without masks.

Volumes are (1, X, Y, Z) HU in LPS and masks (X, Y, Z); a 2D mask here is in display orientation (rows Y, columns
X, as ``axial_slice`` returns it), and boxes are ``[x0, y0, x1, y1]`` display pixels, exclusive ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from datamodules.ctrate import axial_slice, bbox_of, label_components, lung_mask_from_hu

# Labels whose place is the heart and mediastinum, not a lung field.
CARDIAC = {"Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification", "Arterial wall calcification"}


def component_boxes(mask2d: np.ndarray) -> list[list[int]]:
    """The box of every face-connected component of a 2D mask, sorted."""
    labels, n = label_components(mask2d)
    return sorted(bbox_of(labels == c) for c in range(1, n + 1))


def best_slice(mask3d: np.ndarray) -> int:
    """The axial slice (Z index) where a mask (X, Y, Z) has the most voxels (the first of equal ones)."""
    return int(np.argmax(mask3d.sum(axis=(0, 1))))


def heart_box(lungs: np.ndarray) -> list[int] | None:
    """Heart region of a slice: between the lung centroids, from the lungs' anterior edge to their centroid row.

    ``lungs`` is a 2D lung mask in display orientation; None when it has fewer than two components or the box
    would be empty.
    """
    lab, n = label_components(lungs)
    if n < 2:
        return None
    cents = sorted((np.argwhere(lab == c).mean(axis=0) for c in range(1, n + 1)), key=lambda c: c[1])
    x0, x1 = int(cents[0][1]), int(np.ceil(cents[-1][1]))
    y0, y1 = bbox_of(lungs)[1], int(np.ceil(np.mean([c[0] for c in cents])))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def zone(k: int, depth: int) -> str:
    """ "lower", "mid" or "upper": the third of the ``depth`` slices slice ``k`` is in."""
    return ("lower", "mid", "upper")[min(3 * k // depth, 2)]  # k grows towards Superior


def midline(slice_hu: np.ndarray) -> float:
    """Column of the body's midline on an axial HU slice: the middle of the lung fields (of the image if none)."""
    lungs = lung_mask_from_hu(slice_hu)
    if not lungs.any():
        return slice_hu.shape[1] / 2
    x0, _, x1, _ = bbox_of(lungs)
    return (x0 + x1) / 2


def side_of(mask2d: np.ndarray, midline_x: float) -> str:
    """Side of the patient for a 2D mask in display orientation: image left = patient right ("right", "left",
    or "both" when it crosses the column ``midline_x``)."""
    cols = np.flatnonzero(mask2d.any(axis=0))
    if cols[-1] < midline_x:
        return "right"
    return "left" if cols[0] >= midline_x else "both"


def where_text(label: str, side: str, k: int, depth: int) -> str:
    """The "Global" place of a finding in the reasoning, e.g. "right hemithorax, mid zone"."""
    if label in CARDIAC:
        return f"mediastinum and heart, {zone(k, depth)} thorax"
    place = "both hemithoraces" if side == "both" else f"{side} hemithorax"
    return f"{place}, {zone(k, depth)} zone"


def anatomy_roi(vol: Any, label: str, rng: np.random.Generator) -> tuple[int, list[list[int]], str]:
    """(slice, [box], region) without masks: both lung fields by HU (one box), or the cardiac region.

    ``vol`` is the (1, X, Y, Z) HU volume; region is "lung" or "heart". A non-cardiac label draws one slice from
    ``rng`` (30-70% of the depth); when no candidate slice shows lungs, the body box of the middle slice is used.
    """
    depth = vol.shape[-1]
    if label in CARDIAC:
        ks = [round(0.3 * (depth - 1))]
    else:
        ks = [int(rng.integers(round(0.3 * depth), round(0.7 * depth) + 1)), depth // 2]
    for k in ks:
        lungs = lung_mask_from_hu(axial_slice(vol, k))
        if not lungs.any():
            continue
        if label not in CARDIAC:
            return k, [bbox_of(lungs)], "lung"
        heart = heart_box(lungs)
        if heart is not None:
            return k, [heart], "heart"
    k = depth // 2
    return k, [bbox_of(axial_slice(vol, k) > -500)], "heart" if label in CARDIAC else "lung"
