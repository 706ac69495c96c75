"""Where to zoom: ROI proposal sources shared by the VQA builder and the datamodule (``roi_source:`` in YAML).

A source proposes, for one volume and one abnormality, an axial slice and the box(es) to zoom into:

- ``MaskROI``: masks the user already has. The finding's lesion mask (ReXGroundingCT) when there is one, else
  organ/region segmentations (TotalSegmentator's per-structure files by default) of the place the report names.
- ``AnatomyROI``: lung fields, heart and mediastinum found from HU alone; the report's location words pick the part.
- ``CAMROI`` (in ``lightning_modules/roi_classifier.py``, beside the classifier that makes its maps): class
  activation maps of the weakly supervised slice classifier.

``propose_many`` gives K candidate views instead (``datamodules/views.py``): CAM's top slices, slab centres spread
over a region's depth; lesion masks keep one unless ``MaskROI.extra_views`` hides the lesion's view among another
source's.

Boxes are ``[x0, y0, x1, y1]`` display pixels of ``axial_slice(volume, slice_index)``, exclusive ends. Every
proposal goes through ``check_proposal`` (``roi_proposal.py``: slice in the volume, boxes inside the slice, never
empty), and records
say which source made their box (``roi_source``). Region names and the report's location words are read by
``anatomy.py``; the HU regions ``AnatomyROI`` boxes are found by ``anatomy_masks.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from datamodules.anatomy import TOTALSEGMENTATOR_STRUCTURES
from datamodules.anatomy_masks import anatomy_masks
from datamodules.ctrate import CTRATEPaths, bbox_of, largest_component, load_lesion_mask
from datamodules.data_checks import check_mask_grid
from datamodules.roi_proposal import ROIProposal, ROIQuery, check_proposal
from datamodules.views import spaced, spread

__all__ = ["AnatomyROI", "MaskROI", "ROIProposal", "ROIQuery", "ROISource", "check_proposal", "region_proposals"]


def main_lesion(mask3d: np.ndarray) -> tuple[int, np.ndarray]:
    """(best slice, largest 2D component there in display orientation) of a lesion mask (X, Y, Z)."""
    k = int(np.argmax(mask3d.sum(axis=(0, 1))))
    return k, largest_component(mask3d[:, :, k].T)


def slice_extents(mask3d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mask (X, Y, Z) → per axial slice its area in voxels (Z,) and the box of its voxels there (Z, 4), as
    ``bbox_of`` of the slice's display image gives it (garbage where the area is 0). Small enough to cache per
    volume where the masks are not."""

    def ends(any_along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (N, Z) → first and one past last True
        return any_along.argmax(axis=0), any_along.shape[0] - any_along[::-1].argmax(axis=0)

    (x0, x1), (y0, y1) = ends(mask3d.any(axis=1)), ends(mask3d.any(axis=0))
    return mask3d.sum(axis=(0, 1)), np.stack([x0, y0, x1, y1], axis=1)


def region_proposals(
    mask3d: np.ndarray | tuple[np.ndarray, np.ndarray], source: str, region: str, k: int = 1, min_slices: int = 1
) -> list[ROIProposal]:
    """A region mask (X, Y, Z), or its ``slice_extents`` → its fullest axial slice, then slab centres spread over the
    region's depth (up to ``k`` in all, ``min_slices`` apart), each with the box of the region there; empty for an
    empty mask."""
    areas, boxes = slice_extents(mask3d) if isinstance(mask3d, np.ndarray) else mask3d
    if not areas.any():
        return []
    filled = np.flatnonzero(areas)
    candidates = [int(np.argmax(areas)), *spread(int(filled[0]), int(filled[-1]) + 1, k)]
    chosen = spaced([(c, None) for c in candidates if areas[c]], k, min_slices)
    return [ROIProposal(c, [[int(v) for v in boxes[c]]], source, region) for c, _ in chosen]


class ROISource:
    """Proposes the slice and box to zoom into for one abnormality of one volume (None: nothing to propose, the
    caller falls back). ``uses_lesion_masks``: the builder hands it lesion masks and adds look-alike decoy boxes
    to negatives, so a tight box does not give the answer away."""

    name = "roi"
    uses_lesion_masks = False

    def propose(self, query: ROIQuery) -> ROIProposal | None:
        raise NotImplementedError

    def propose_many(self, query: ROIQuery, k: int, min_slices: int) -> list[ROIProposal]:
        """Up to ``k`` candidate views, best first, their slices at least ``min_slices`` apart (the candidate views
        of ``datamodules/views.py``). By default the one view ``propose`` makes: a source that ranks nothing keeps
        K = 1."""
        p = self.propose(query)
        return [] if p is None else [p]

    def describe(self) -> dict[str, Any]:
        """Class and settings that decide the boxes, recorded beside the VQA files built with this source (and
        valid as ``--roi_source`` again)."""
        settings = {
            k: v.describe() if isinstance(v, ROISource) else v for k, v in vars(self).items() if not k.startswith("_")
        }
        return {"class_path": f"{type(self).__module__}.{type(self).__name__}", "init_args": settings}


class MaskROI(ROISource):
    """Masks the user has: the lesion mask when the volume has one, else the region segmentation the report names.

    Args:
        regions_dir: folder of organ/region masks, ``<regions_dir>/<volume stem>/<structure>.nii.gz`` in the CT's
            voxel grid (TotalSegmentator's default output), relative to the data root unless absolute; null:
            lesion masks only.
        structures: region → structure files whose union is that region (default: TotalSegmentator's names).
        lesions: use lesion masks where there are some; false boxes every volume by its region masks (to measure
            how well region masks alone find lesions, as on the synthetic data where every lesion has a mask).
        extra_views: the source of a question's other candidate views (e.g. ``CAMROI``), so the lesion's own view
            is hidden among views that need no mask; null: the lesion's view alone (K = 1).
    """

    name = "mask"

    def __init__(
        self,
        regions_dir: str | None = None,
        structures: dict[str, list[str]] | None = None,
        lesions: bool = True,
        extra_views: ROISource | None = None,
    ) -> None:
        self.regions_dir = regions_dir
        self.structures = structures or TOTALSEGMENTATOR_STRUCTURES
        self.lesions = lesions
        if extra_views is not None:  # described only when set, so existing builds keep their build.json
            self.extra_views = extra_views
        self._cache: tuple[str, dict[str, np.ndarray | None]] = ("", {})

    def _structure(self, query: ROIQuery, name: str) -> np.ndarray | None:
        volume_key, masks = self._cache
        if volume_key != query.volume_name:
            masks = {}
            self._cache = (query.volume_name, masks)
        if name not in masks:
            path = CTRATEPaths(query.root).region_mask(query.volume_name, name, str(self.regions_dir))
            # No CT-RATE row (a user's own volume): the mask file's own header orients it.
            mask = load_lesion_mask(path, query.row or None)[0] if path.is_file() else None
            if mask is not None:  # checked before it is cached, so a second query cannot use it unchecked
                check_mask_grid(path, mask.shape, query.volume.shape[-3:])
            masks[name] = mask
        return masks[name]

    @property
    def uses_lesion_masks(self) -> bool:  # type: ignore[override]
        return self.lesions

    def propose(self, query: ROIQuery) -> ROIProposal | None:
        if self.lesions and query.lesion is not None and query.lesion.any():
            k, comp = main_lesion(query.lesion)
            return ROIProposal(k, [bbox_of(comp)], self.name, "lesion")
        return next(iter(self._regions(query, 1, 1)), None)

    def propose_many(self, query: ROIQuery, k: int, min_slices: int) -> list[ROIProposal]:
        if getattr(self, "extra_views", None) is not None:
            return self.extra_views.propose_many(replace(query, lesion=None), k, min_slices)
        if self.lesions and query.lesion is not None and query.lesion.any():
            return super().propose_many(query, k, min_slices)
        return self._regions(query, k, min_slices)

    def _regions(self, query: ROIQuery, k: int, min_slices: int) -> list[ROIProposal]:
        if self.regions_dir is None:
            return []
        found = [m for s in self.structures.get(query.region, []) if (m := self._structure(query, s)) is not None]
        return region_proposals(np.any(found, axis=0), "region_mask", query.region, k, min_slices) if found else []


class AnatomyROI(ROISource):
    """Regions found from HU alone (``anatomy_masks``); the report's location words pick the region.

    Args:
        lung_hu: HU below which voxels count as aerated lung.
        soft_tissue: HU range of mediastinal soft tissue (heart, vessels).
    """

    name = "anatomy"

    def __init__(self, lung_hu: float = -400.0, soft_tissue: tuple[float, float] = (-200.0, 300.0)) -> None:
        self.lung_hu = lung_hu
        self.soft_tissue = tuple(soft_tissue)
        # One volume's per-slice areas and boxes per region (not its masks: a dozen full-size masks of a real CT
        # are ~1 GB), from which proposals for any K are cheap.
        self._cache: tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]] = ("", {})

    def propose(self, query: ROIQuery) -> ROIProposal | None:
        return next(iter(self.propose_many(query, 1, 1)), None)

    def propose_many(self, query: ROIQuery, k: int, min_slices: int) -> list[ROIProposal]:
        if self._cache[0] != query.volume_name:
            masks = anatomy_masks(query.volume.detach().cpu().numpy()[0], self.lung_hu, self.soft_tissue)
            self._cache = (query.volume_name, {r: slice_extents(m) for r, m in masks.items()})
        extents = self._cache[1]
        return region_proposals(extents[query.region], self.name, query.region, k, min_slices) or region_proposals(
            extents["lungs"], self.name, "lungs", k, min_slices
        )
