"""What a CT-VQA record shows: its views' HU slices or slabs, windowed, zoom-embedded and resized into the
(3, H, W) images the processor takes (one per candidate view, ``datamodules/views.py``).

Decoded volumes are kept in a small LRU cache because several questions share one volume; single slices can also
come from the on-disk slice cache. ``image_condition`` (the visual-reliance audit) shows each question another
image (``datamodules/image_conditions.py``, ``record_views.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.transforms import Compose, Resized
from monai.utils import convert_to_tensor

from datamodules.boxes import box_problem
from datamodules.ctrate import BadSampleError, VolumeCache, axial_slice
from datamodules.image_conditions import NEEDS_ZOOM, PIXEL_CONDITIONS, ImageCondition
from datamodules.record_views import RecordViews
from datamodules.slabs import axial_slab, slice_spacing
from datamodules.slice_cache import SliceCache
from datamodules.transforms import HUWindowd, ZoomEmbedd, condition_steps, one_intra_op_thread
from datamodules.views import views_of

if TYPE_CHECKING:
    from datamodules.vqa_dataset import ZoomSpec


class RecordImages:
    """A record → the images its question is shown with (``images``), rendered as in training (``render``)."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        root: Path,
        metadata: dict[str, dict[str, Any]],
        windows: Sequence[str],
        zoom: ZoomSpec | None,
        image_size: int,
        volume_cache_size: int,
        slice_cache_dir: str | Path | None = None,
        image_condition: ImageCondition | None = None,
    ) -> None:
        self.metadata = metadata
        self.volumes = VolumeCache(root, volume_cache_size)
        self.slice_cache = SliceCache(slice_cache_dir, self.volumes) if slice_cache_dir else None
        steps: list[Any] = [HUWindowd(keys="image", windows=list(windows))]
        mode = image_condition.name if image_condition is not None else "original"
        record_mode = mode not in ("original", *PIXEL_CONDITIONS)
        self.views = RecordViews(image_condition, records, self.volumes, metadata, root) if record_mode else None
        if zoom is not None:
            steps.append(
                ZoomEmbedd(
                    keys="image",
                    box_key="roi",
                    layout=zoom.layout,
                    margin=zoom.margin,
                    inset_fraction=zoom.inset_fraction,
                    out_key="zoomed" if mode in NEEDS_ZOOM else None,
                )
            )
        resize = Resized(keys="image", spatial_size=image_size, size_mode="longest", mode="bilinear")
        steps += condition_steps(image_condition, steps[-1] if zoom is not None else None, resize)
        self.transform = Compose(steps)

    def shown(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record whose slice(s) and boxes the question is shown: itself, or the audit condition's."""
        return record if self.views is None else self.views.view(record)[0]

    def images(self, record: dict[str, Any]) -> list[torch.Tensor]:
        """The (3, H, W) images in [0, 1] the model sees for this record, one per view (``datamodules/views.py``;
        a single-slice record has one). Raises BadSampleError naming the record's line and the bad field."""
        record = self.shown(record)
        many = bool(record.get("views"))
        out = []
        for i, view in enumerate(views_of(record)):
            hu = self.hu_view(record, view)
            height, width = hu.shape
            for box in view["roi"]:
                if (problem := box_problem(box, height, width)) is not None:
                    field = f"views[{i}].roi" if many else "roi"
                    raise BadSampleError(f"{record['_where']}: field '{field}' {problem} of {record['volume_name']}")
            out.append(self.render(hu, view["roi"]))
        return out

    def hu_view(self, record: dict[str, Any], view: dict[str, Any]) -> np.ndarray:
        """One view's HU image: its slice (``hu_slice``), or the projection of its slab (``datamodules/slabs.py``)."""
        if not view["slab_mm"]:
            return self.hu_slice({**record, "slice_index": view["slice_index"]})
        volume = self.volumes.get(record["volume_name"], self.metadata.get(record["volume_name"]))
        try:
            return axial_slab(volume, view["slice_index"], view["slab_mm"], slice_spacing(volume), view["projection"])
        except BadSampleError as e:
            raise BadSampleError(f"{record['_where']}: field 'views': {e} ({record['volume_name']})") from e

    def hu_slice(self, record: dict[str, Any]) -> np.ndarray:
        """The record's axial slice in HU: from the slice cache on disk when there is one, else cut from its
        (memory-cached) volume."""
        name = record["volume_name"]
        meta = self.metadata.get(name)
        if self.slice_cache is None:
            return self._cut(record, meta)
        return self.slice_cache.get(name, meta, record["slice_index"], lambda: self._cut(record, meta))

    def _cut(self, record: dict[str, Any], meta: dict[str, Any] | None) -> np.ndarray:
        volume = self.volumes.get(record["volume_name"], meta)
        depth = volume.shape[-1]
        if not 0 <= record["slice_index"] < depth:
            raise BadSampleError(
                f"{record['_where']}: field 'slice_index' {record['slice_index']} is outside the volume's "
                f"{depth} slices ({record['volume_name']})"
            )
        return axial_slice(volume, record["slice_index"])

    def render(self, slice_hu: np.ndarray, roi: list[list[int]]) -> torch.Tensor:
        """An axial HU slice and its ROI boxes → the windowed, zoom-embedded, resized (3, H, W) image in [0, 1]."""
        with one_intra_op_thread():
            data = self.transform({"image": torch.as_tensor(np.asarray(slice_hu, dtype=np.float32)), "roi": roi})
            # A plain tensor: Resized returns a MetaTensor, whose every later op (here, to_pil) pays for bookkeeping
            # of metadata that the 2D image does not use (a tenth of a sample's time; same values).
            return convert_to_tensor(data["image"], track_meta=False).float().clamp(0, 1)
