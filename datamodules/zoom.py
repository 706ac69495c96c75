"""Zoom-in embedding: a magnified crop of the ROI embedded in the windowed (3, H, W) image (coarse-to-fine view).

`ZoomEmbed` is the array transform (the maths, on a bare image and its boxes); its dict version `ZoomEmbedd`
(datamodules/transforms.py) applies it to each key, after MONAI's `ScaleIntensityRange` / `ScaleIntensityRanged`.

An ROI box is `[x0, y0, x1, y1]` in the slice's pixels (x = column, y = row, exclusive ends).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_tensor

from datamodules.boxes import box_problem


def _parse_boxes(roi: Any, height: int, width: int) -> list[list[int]]:
    """`roi` (one box or a list of boxes) as int boxes checked against an H × W image; raises ValueError."""
    try:
        arr = np.asarray(roi, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"ROI {roi!r} is not a list of [x0, y0, x1, y1] boxes") from e
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0:
        raise ValueError(f"ROI {roi!r} is not a list of [x0, y0, x1, y1] boxes")
    if not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"ROI {roi!r} must hold integer pixel coordinates")
    boxes = arr.astype(np.int64).tolist()
    for box in boxes:
        problem = box_problem(box, height, width)
        if problem is not None:
            raise ValueError(f"ROI box {problem}")
    return boxes


def _crop_range(lo: int, hi: int, side: int, size: int) -> tuple[int, int]:
    """Centre `side` px on [lo, hi); shift into [0, size), or clip if it cannot fit."""
    if side > size:
        return 0, size
    start = min(max((lo + hi - side) // 2, 0), size - side)
    return start, start + side


def draw_rect(img: torch.Tensor, box: Sequence[int], color: torch.Tensor, width: int) -> None:
    """Paint a `width`-px frame on the border pixels inside `box`, in place."""
    x0, y0, x1, y1 = box
    c = color[:, None, None]
    img[:, y0 : min(y0 + width, y1), x0:x1] = c
    img[:, max(y1 - width, y0) : y1, x0:x1] = c
    img[:, y0:y1, x0 : min(x0 + width, x1)] = c
    img[:, y0:y1, max(x1 - width, x0) : x1] = c


class ZoomEmbed(Transform):
    """Crop the ROI, magnify it, embed it in the (3, H, W) image, outline the ROI.

    The crop is the union of the ROI boxes grown by `margin` × its size on each side, made square (side ≥
    `min_crop`), shifted to stay inside the image. A square larger than the image's short side shrinks to it
    (squareness wins over margin), never below the box; only a box longer than the short side gives a clipped,
    non-square crop (then stretched to the square target).

    Layouts:
      - `inset`: (3, H, W). The magnified crop, square side round(`inset_fraction` × min(H, W)), sits in the
        image corner farthest from the box centre, inside an `outline_width` frame in `outline_color` (frame +
        inset flush with the corner). The inset is pasted last: it covers what lies under it.
      - `side_by_side`: (3, H, 2W). Left: global view; right: the crop magnified to min(H, W) square and
        letterboxed (black bars) into an H × W panel, so it is never stretched; for square slices it fills it.

    Each ROI box is outlined on the global view after the crop is taken, so the magnified crop shows clean
    pixels. Magnification is `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`.
    Raises ValueError for bad settings, an image that is not (3, H, W), or a malformed or out-of-image ROI.
    """

    def __init__(
        self,
        layout: Literal["inset", "side_by_side"] = "inset",
        margin: float = 0.5,
        min_crop: int = 8,
        inset_fraction: float = 0.5,
        outline_color: tuple[float, float, float] = (1.0, 1.0, 0.0),
        outline_width: int = 1,
    ) -> None:
        if layout not in ("inset", "side_by_side"):
            raise ValueError(f"layout must be 'inset' or 'side_by_side', got {layout!r}")
        if margin < 0:
            raise ValueError(f"margin must be ≥ 0, got {margin}")
        if min_crop < 1:
            raise ValueError(f"min_crop must be ≥ 1, got {min_crop}")
        if not 0 < inset_fraction < 1:
            raise ValueError(f"inset_fraction must be in (0, 1), got {inset_fraction}")
        if len(outline_color) != 3:
            raise ValueError(f"outline_color must be RGB, got {outline_color}")
        if outline_width < 0:
            raise ValueError(f"outline_width must be ≥ 0, got {outline_width}")
        self.layout = layout
        self.margin = margin
        self.min_crop = min_crop
        self.inset_fraction = inset_fraction
        self.outline_color = torch.tensor(outline_color, dtype=torch.float32)
        self.outline_width = outline_width

    def crop_box(self, box: Sequence[int], height: int, width: int) -> list[int]:
        """The square crop `[x0, y0, x1, y1]` around `box` (see class docstring)."""
        x0, y0, x1, y1 = box
        long_side = max(x1 - x0, y1 - y0)
        # round before ceil: 10 * 1.2 is 12.000000000000002 in floating point.
        grown = math.ceil(round(long_side * (1 + 2 * self.margin), 6))
        side = max(min(max(grown, self.min_crop), min(height, width)), long_side)
        cx0, cx1 = _crop_range(x0, x1, side, width)
        cy0, cy1 = _crop_range(y0, y1, side, height)
        return [cx0, cy0, cx1, cy1]

    def __call__(self, img: NdarrayOrTensor, roi: Any) -> torch.Tensor:
        """(3, H, W) image in [0, 1] and its ROI box(es) → the zoom-embedded image ((3, H, W) or (3, H, 2W))."""
        return self.embed(img, roi)[0]

    def embed(self, img: NdarrayOrTensor, roi: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """As `__call__`, plus where things went: {"box": union box, "crop": crop box in input coords, "inset":
        where the magnified crop lies in output coords, "layout": layout}, boxes as [x0, y0, x1, y1] ints."""
        if not isinstance(img, (torch.Tensor, np.ndarray)) or img.ndim != 3 or img.shape[0] != 3:
            shape = tuple(getattr(img, "shape", ()))
            raise ValueError(
                f"expected a (3, H, W) image (apply HUWindow or HUWindowd first), got {type(img).__name__} "
                f"of shape {shape}"
            )
        img = convert_to_tensor(img, track_meta=False)
        _, h, w = img.shape
        boxes = _parse_boxes(roi, h, w)
        union = [
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ]
        cx0, cy0, cx1, cy1 = crop = self.crop_box(union, h, w)
        color = self.outline_color.to(img.device, img.dtype)
        frame = self.outline_width

        if self.layout == "inset":
            side = round(self.inset_fraction * min(h, w))
            side = max(1, min(side, min(h, w) - 2 * frame))
            # Farthest corner, per axis: the side of the image the box centre is not on.
            right = union[0] + union[2] <= w
            bottom = union[1] + union[3] <= h
            ix0 = w - frame - side if right else frame
            iy0 = h - frame - side if bottom else frame
            out = img.clone()
        else:
            side = min(h, w)
            ix0 = w + (w - side) // 2
            iy0 = (h - side) // 2
            out = img.new_zeros(3, h, 2 * w)
            out[:, :, :w] = img
        inset = [ix0, iy0, ix0 + side, iy0 + side]

        zoomed = F.interpolate(
            img[None, :, cy0:cy1, cx0:cx1],
            size=(side, side),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )[0]
        for box in boxes:
            draw_rect(out, box, color, frame)
        if self.layout == "inset" and frame > 0:
            panel = [ix0 - frame, iy0 - frame, ix0 + side + frame, iy0 + side + frame]
            draw_rect(out, panel, color, frame)
        out[:, iy0 : iy0 + side, ix0 : ix0 + side] = zoomed
        return out, {"box": union, "crop": crop, "inset": inset, "layout": self.layout}
