"""Decoy boxes for negatives: where a label would be on a slice, a box placed there, and what positives look like.

A negative of a volume with lesion masks shows a lesion-like box (with the probability that the split's positives
of that label have masks), sized and placed on a slice like the split's masked positives, so the box does not
give the answer away. Boxes are ``[x0, y0, x1, y1]`` display pixels, exclusive ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from datamodules.anatomy import region_of
from datamodules.ctrate import Finding, bbox_of, lung_mask_from_hu
from datamodules.roi_sources import main_lesion
from datamodules.vqa_builder.geometry import CARDIAC, heart_box
from datamodules.vqa_builder.report_text import report_region

_CALCIFIC = {"Arterial wall calcification", "Coronary artery wall calcification"}
# Decoy (width, height) px and relative slice range when a split has no masked positive of the label.
_DECOY_FALLBACK: dict[str, tuple[tuple[int, int], tuple[float, float]]] = {
    "Lung nodule": ((2, 6), (0.15, 0.8)),
    "Arterial wall calcification": ((1, 2), (0.0, 1.0)),
    "Coronary artery wall calcification": ((1, 2), (0.15, 0.4)),
    "Cardiomegaly": ((30, 50), (0.15, 0.4)),
}


def decoy_region(label: str, slice_hu: np.ndarray) -> np.ndarray:
    """Pixels where a decoy box of ``label`` may be centred on this (Y, X) HU slice (empty if none).

    Lung fields by HU for lung findings, mediastinal soft tissue for calcifications, the heart box's centre pixel
    for the other cardiac labels.
    """
    lungs = lung_mask_from_hu(slice_hu)
    if label not in CARDIAC:
        return lungs
    region = np.zeros(slice_hu.shape, bool)
    heart = heart_box(lungs)
    if heart is None:
        return region
    if label in _CALCIFIC:  # mediastinal soft tissue between the lungs: aortic wall, heart border
        x0, x1 = heart[0], heart[2]
        y0, y1 = bbox_of(lungs)[1], bbox_of(lungs)[3]
        region[y0:y1, x0:x1] = True
        return region & ~lungs & (slice_hu > -200) & (slice_hu < 300)
    region[(heart[1] + heart[3]) // 2, (heart[0] + heart[2]) // 2] = True
    return region


def place_box(region: np.ndarray, w: int, h: int, rng: np.random.Generator) -> list[int]:
    """A w×h box inside the slice, wholly inside ``region`` if possible, else centred on a region pixel.

    ``region`` is a non-empty 2D bool mask (Y, X); ``w`` and ``h`` are clipped to 1..the slice size.
    """
    height, width = region.shape
    w, h = max(1, min(w, width)), max(1, min(h, height))
    ii = np.pad(region.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    inside = np.argwhere(sums == w * h)
    if len(inside):
        y0, x0 = (int(v) for v in inside[rng.integers(len(inside))])
    else:
        pts = np.argwhere(region)
        cy, cx = (int(v) for v in pts[rng.integers(len(pts))])
        y0, x0 = min(max(cy - h // 2, 0), height - h), min(max(cx - w // 2, 0), width - w)
    return [x0, y0, x0 + w, y0 + h]


class PositiveStats:
    """Per label, over the masked volumes of a split: positive main-lesion boxes, and how often positives
    have a mask (the probability that a negative there gets a decoy box)."""

    def __init__(self) -> None:
        self.boxes: dict[str, list[list[tuple[int, int, float]]]] = {}  # per volume: (w, h, k / (depth - 1))
        self.masked: Counter = Counter()
        self.unmasked: Counter = Counter()
        self.regions: dict[str, list[str]] = {}  # where the reports place each label's positives

    def add_regions(self, present: list[str], row: Mapping[str, Any]) -> None:
        """Record where the report of ``row`` places each of its ``present`` labels (every volume, masked or not)."""
        for label in present:
            self.regions.setdefault(label, []).append(report_region(label, row))

    def sample_region(self, label: str, rng: np.random.Generator) -> str:
        """Where a positive of ``label`` would be: the report region of a random positive of the split."""
        pool = self.regions.get(label)
        return pool[int(rng.integers(len(pool)))] if pool else region_of(label)

    def add(self, present: list[str], by_label: Mapping[str, list[tuple[Finding, np.ndarray]]]) -> None:
        """Count a masked volume's ``present`` labels as masked or not, and keep each masked one's main-lesion
        views; ``by_label`` is ``findings_by_label`` of the volume."""
        for label in present:
            if label not in by_label:
                self.unmasked[label] += 1
                continue
            self.masked[label] += 1
            views = []
            for _, m in by_label[label]:
                k, comp = main_lesion(m)
                x0, y0, x1, y1 = bbox_of(comp)
                views.append((x1 - x0, y1 - y0, k / max(m.shape[-1] - 1, 1)))
            self.boxes.setdefault(label, []).append(views)

    def p_decoy(self, label: str) -> float:
        """The fraction of positives of ``label`` in masked volumes that have a mask (0 when there are none)."""
        total = self.masked[label] + self.unmasked[label]
        return self.masked[label] / total if total else 0.0

    def sample(self, label: str, rng: np.random.Generator) -> tuple[int, int, float]:
        """(w, h, relative slice) of a random positive of ``label``, or from the fixed fallback range."""
        pool = self.boxes.get(label)
        if pool:
            views = pool[int(rng.integers(len(pool)))]
            return views[int(rng.integers(len(views)))]
        (lo, hi), (f0, f1) = _DECOY_FALLBACK.get(label, ((4, 20), (0.2, 0.8)))
        w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        return w, h, float(rng.uniform(f0, f1))
