"""Candidate views: several slices (or thin slabs) of one volume shown with one question, each with its zoom.

A record built with a ``ViewSpec`` (``k > 1`` or ``slab_mm > 0``) carries ``views``: a list of
``{"slice_index", "roi", "z_mm", "slab_mm", "projection", "shows_lesion"}`` in z order, which the prompt labels
``View k (z = … mm)``. Records without ``views`` are single-slice records as before (``slice_index`` and ``roi``);
their files, prompts and numbers are unchanged. ``shows_lesion`` is whether the view's slab meets the asked
finding's lesion mask (null without one): the evidence reward and the "some view shows the lesion" rate read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from common.checkpoint_types import allow_in_checkpoints
from datamodules.boxes import is_box_list
from datamodules.ctrate import BadSampleError
from datamodules.roi_proposal import ROIQuery, check_proposal
from datamodules.slabs import PROJECTIONS, Projection, slab_range, slice_spacing

# Findings a maximum intensity projection brings out (small and dense); the others get the mean projection.
MIP_LABELS = ("Lung nodule", "Coronary artery wall calcification", "Arterial wall calcification")
VIEW_KEYS = ("slice_index", "roi", "z_mm", "slab_mm", "projection", "shows_lesion")


@dataclass
class ViewSpec:
    """How many candidate views a question shows and how each is made.

    Args:
        k: views per presence/abnormality question (location, size and count questions keep their lesion's slice).
        min_distance_mm: least z distance between two views' centres, so K views are not K neighbours.
        slab_mm: each view's slab thickness (0: one slice; 10 mm suits real CT).
        projection: ``max`` (MIP), ``mean``, or ``auto``: MIP for the findings in ``MIP_LABELS`` when a presence
            question names them, else mean; abnormality questions (whose label is the answer) always get MIP.
    """

    k: int = 1
    min_distance_mm: float = 20.0
    slab_mm: float = 0.0
    projection: Literal["auto", "max", "mean"] = "auto"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"views.k must be at least 1, got {self.k}")
        if self.slab_mm < 0 or self.min_distance_mm < 0:
            raise ValueError(f"views.slab_mm and views.min_distance_mm must be ≥ 0, got {self.slab_mm}, "
                             f"{self.min_distance_mm}")  # fmt: skip
        if self.projection not in ("auto", *PROJECTIONS):
            raise ValueError(f"views.projection {self.projection!r} is not one of auto, {', '.join(PROJECTIONS)}")

    @property
    def active(self) -> bool:
        """Whether records carry ``views`` at all (K = 1 without slabs writes today's records)."""
        return self.k > 1 or self.slab_mm > 0

    def projection_for(self, question_type: str, label: str | None) -> Projection:
        if self.projection != "auto":
            return self.projection
        return "max" if question_type != "presence" or label in MIP_LABELS else "mean"

    def min_slices(self, z_spacing: float) -> int:
        """``min_distance_mm`` in slices (at least 1: two views never share a slice)."""
        return max(1, int(np.ceil(self.min_distance_mm / z_spacing)))


def spaced(slices_and_boxes: Sequence[tuple[int, list[list[int]]]], k: int, min_slices: int) -> list[tuple[int, Any]]:
    """The first ``k`` of the (slice, boxes) candidates, best first, whose slices are ``min_slices`` apart."""
    kept: list[tuple[int, Any]] = []
    for slice_index, boxes in slices_and_boxes:
        if all(abs(slice_index - s) >= min_slices for s, _ in kept):
            kept.append((slice_index, boxes))
        if len(kept) == k:
            break
    return kept


def spread(lo: int, hi: int, k: int) -> list[int]:
    """``k`` slice indices spread evenly over ``[lo, hi)`` (the centres of k equal parts), without repeats."""
    return sorted({int(lo + (hi - lo) * (i + 0.5) / k) for i in range(k)})


def shows_lesion(mask3d: np.ndarray | None, slice_index: int, slab_mm: float, z_spacing: float) -> bool | None:
    """Whether the slab around ``slice_index`` meets a lesion mask (X, Y, Z); None without a mask."""
    if mask3d is None:
        return None
    lo, hi = slab_range(slice_index, mask3d.shape[-1], slab_mm, z_spacing)
    return bool(mask3d[:, :, lo:hi].any())


def make_views(chosen: Sequence[tuple[int, list[list[int]]]], spec: ViewSpec, z_spacing: float,
               projection: Projection, lesion: np.ndarray | None) -> list[dict[str, Any]]:  # fmt: skip
    """The record's ``views`` for the chosen (slice, boxes), sorted by z (so a view's place says nothing of the
    source's ranking, and the oracle's slice cannot be told from the others by position)."""
    views = [
        {
            "slice_index": int(s),
            "roi": [list(map(int, b)) for b in boxes],
            "z_mm": round(float(s) * z_spacing, 1),
            "slab_mm": float(spec.slab_mm),
            "projection": projection,
            "shows_lesion": shows_lesion(lesion, s, spec.slab_mm, z_spacing),
        }
        for s, boxes in chosen
    ]
    return sorted(views, key=lambda v: v["slice_index"])


def choose_views(
    source: Any,
    query: ROIQuery,
    primary: tuple[int, list[list[int]]],
    spec: ViewSpec,
    projection: Projection,
    where: str,
    lesion: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """A question's ``views``: its own view ``primary`` (slice, boxes) first, then ``source.propose_many``'s
    candidates for ``query`` (an ``ROISource``; asked without the lesion mask), ``min_distance_mm`` apart, K in
    all; ``lesion`` (X, Y, Z) fills ``shows_lesion``. The builder and ``cli.py ask`` both choose views here, so a
    deployed question sees the views training did. Raises BadSampleError (``where``) for a proposal off the volume."""
    z = slice_spacing(query.volume)
    min_slices = spec.min_slices(z)
    found = source.propose_many(replace(query, lesion=None), spec.k + 1, min_slices) if spec.k > 1 else []
    extra = [check_proposal(p, query.volume, where) for p in found]
    chosen = spaced([primary, *((p.slice_index, p.boxes) for p in extra)], spec.k, min_slices)
    return make_views(chosen, spec, z, projection, lesion)


def views_of(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The record's views: its ``views``, or its one slice and box as a single plain view."""
    if record.get("views"):
        return list(record["views"])
    return [{"slice_index": record["slice_index"], "roi": record["roi"], "slab_mm": 0.0, "projection": "max"}]


def view_labels(record: Mapping[str, Any]) -> list[str] | None:
    """The prompt's label of each view, ``View k (z = … mm)``; None for a single-slice record (no label, as before)."""
    if not record.get("views"):
        return None
    return [f"View {i} (z = {v['z_mm']:.0f} mm)" for i, v in enumerate(record["views"], start=1)]


def check_views(views: Any, where: str) -> None:
    """Reader-side check of a record's ``views``. Raises BadSampleError naming ``where`` and the field."""
    if not isinstance(views, list) or not views:
        raise BadSampleError(f"{where}: field 'views' should be a non-empty list of views, got {views!r}")
    for i, view in enumerate(views):
        field = f"field 'views[{i}]'"
        if not isinstance(view, dict) or set(view) != set(VIEW_KEYS):
            raise BadSampleError(f"{where}: {field} should be an object with keys {', '.join(VIEW_KEYS)}")
        if not isinstance(view["slice_index"], int) or isinstance(view["slice_index"], bool) or view["slice_index"] < 0:
            raise BadSampleError(f"{where}: {field} slice_index {view['slice_index']!r} is not a slice index")
        if not isinstance(view["z_mm"], int | float) or not isinstance(view["slab_mm"], int | float):
            raise BadSampleError(f"{where}: {field} z_mm and slab_mm should be numbers (mm)")
        if view["slab_mm"] < 0:
            raise BadSampleError(f"{where}: {field} slab_mm {view['slab_mm']} is negative")
        if view["projection"] not in PROJECTIONS:
            raise BadSampleError(f"{where}: {field} projection {view['projection']!r} is not max or mean")
        if view["shows_lesion"] not in (True, False, None):
            raise BadSampleError(f"{where}: {field} shows_lesion should be true, false or null")
        if not is_box_list(view["roi"]):
            raise BadSampleError(
                f"{where}: {field} roi {view['roi']!r} is not a list of [x0, y0, x1, y1] with x0 < x1, y0 < y1"
            )


allow_in_checkpoints(ViewSpec)  # saved in the data module's hyperparameters
