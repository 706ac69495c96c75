"""Dict transforms from a 2D HU slice to the image the model sees.

`HUWindowd` maps Hounsfield units to a (3, H, W) image in [0, 1]; `ZoomEmbedd` embeds a
magnified crop of the ROI into that same image (the coarse-to-fine "zoom-in embedding");
`to_pil` hands the result to the HF image processor.

Conventions: a slice is (H, W), rows anterior→posterior, columns patient right→left.
An ROI box is `[x0, y0, x1, y1]` in that slice's pixels (x = column, y = row, exclusive
ends).
"""

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor
from PIL import Image

# (center, width) in HU. Standard radiology values (Radiopaedia, "Windowing (CT)"); the
# mediastinal window varies between sites (W 350-400, L 40-50), we use L 40 / W 400.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}


def _window(hu: torch.Tensor, center: float, width: float) -> torch.Tensor:
    """Linear map of [center - width/2, center + width/2] to [0, 1], clipped outside."""
    return ((hu - (center - width / 2)) / width).clamp_(0.0, 1.0)


class HUWindowd(MapTransform):
    """Window an (H, W) HU slice into a float32 (3, H, W) image in [0, 1].

    One window gives grey replicated to RGB; three give one window per channel
    (multi-window RGB, in the order given).
    """

    def __init__(
        self,
        keys: KeysCollection,
        windows: Sequence[str] = ("lung",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        windows = [windows] if isinstance(windows, str) else list(windows)
        unknown = [w for w in windows if w not in WINDOWS]
        if unknown:
            raise ValueError(f"unknown CT window(s) {unknown}; valid names: {sorted(WINDOWS)}")
        if len(windows) not in (1, 3):
            raise ValueError(f"give 1 window (grey) or 3 windows (one per RGB channel), got {len(windows)}: {windows}")
        self.windows = windows

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            # track_meta=False: downstream code indexes and writes pixels; a MetaTensor
            # would carry (and slowly update) affine metadata that no longer applies.
            hu = convert_to_tensor(d[key], dtype=torch.float32, track_meta=False)
            if hu.ndim != 2:
                raise ValueError(f"'{key}' must be a 2D (H, W) HU slice, got shape {tuple(hu.shape)}")
            if len(self.windows) == 1:
                # repeat, not expand: ZoomEmbedd and others write pixels per channel.
                d[key] = _window(hu, *WINDOWS[self.windows[0]]).repeat(3, 1, 1)
            else:
                d[key] = torch.stack([_window(hu, *WINDOWS[w]) for w in self.windows])
        return d


def _parse_boxes(roi: Any, height: int, width: int) -> list[list[int]]:
    """Validate `roi` (one box or a list of boxes) against an H × W image."""
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
    for x0, y0, x1, y1 in boxes:
        box = [x0, y0, x1, y1]
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"ROI box {box} is empty (need x0 < x1 and y0 < y1) in the {height}×{width} (H×W) slice")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"ROI box {box} is outside the {height}×{width} (H×W) slice")
    return boxes


def _crop_range(lo: int, hi: int, side: int, size: int) -> tuple[int, int]:
    """Centre `side` px on [lo, hi); shift into [0, size), or clip if it cannot fit."""
    if side > size:
        return 0, size
    start = min(max((lo + hi - side) // 2, 0), size - side)
    return start, start + side


def _draw_rect(img: torch.Tensor, box: Sequence[int], color: torch.Tensor, width: int) -> None:
    """Paint a `width`-px frame on the border pixels inside `box`, in place."""
    x0, y0, x1, y1 = box
    c = color[:, None, None]
    img[:, y0 : min(y0 + width, y1), x0:x1] = c
    img[:, max(y1 - width, y0) : y1, x0:x1] = c
    img[:, y0:y1, x0 : min(x0 + width, x1)] = c
    img[:, y0:y1, max(x1 - width, x0) : x1] = c


class ZoomEmbedd(MapTransform):
    """Crop the ROI, magnify it, embed it in the (3, H, W) image, outline the ROI.

    The crop is the union of the ROI boxes grown by `margin` × its size on each side,
    made square (side ≥ `min_crop`), shifted to stay inside the image. A square larger
    than the image's short side shrinks to it (squareness wins over margin), never below
    the box; only a box longer than the short side gives a clipped, non-square crop
    (then stretched to the square target).

    Layouts:
      - `inset`: (3, H, W). The magnified crop, square side
        round(`inset_fraction` × min(H, W)), sits in the image corner farthest from the
        box centre, inside an `outline_width` frame in `outline_color` (frame + inset
        flush with the corner). The inset is pasted last: it covers what lies under it.
      - `side_by_side`: (3, H, 2W). Left: global view; right: the crop magnified to
        min(H, W) square and letterboxed (black bars) into an H × W panel, so it is
        never stretched; for square slices it fills the panel.

    Each ROI box is outlined on the global view after the crop is taken, so the
    magnified crop shows clean pixels. Magnification is `F.interpolate(mode="bilinear",
    align_corners=False, antialias=False)`.

    `data[meta_key]` receives {"box": union box, "crop": crop box in input coords,
    "inset": where the magnified crop lies in output coords, "layout": layout}, all
    [x0, y0, x1, y1] ints. All `keys` must share one size, since the boxes are in
    that slice's pixels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_key: str = "roi",
        layout: Literal["inset", "side_by_side"] = "inset",
        margin: float = 0.5,
        min_crop: int = 8,
        inset_fraction: float = 0.5,
        outline_color: tuple[float, float, float] = (1.0, 1.0, 0.0),
        outline_width: int = 1,
        out_key: str | None = None,
        meta_key: str = "zoom_meta",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
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
        if out_key is not None and len(self.keys) != 1:
            raise ValueError(f"out_key needs exactly one key, got keys {self.keys}")
        self.box_key = box_key
        self.layout = layout
        self.margin = margin
        self.min_crop = min_crop
        self.inset_fraction = inset_fraction
        self.outline_color = torch.tensor(outline_color, dtype=torch.float32)
        self.outline_width = outline_width
        self.out_key = out_key
        self.meta_key = meta_key

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

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = None
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
                shape = tuple(getattr(img, "shape", ()))
                raise ValueError(
                    f"'{key}' must be a (3, H, W) tensor (apply HUWindowd first), "
                    f"got {type(img).__name__} of shape {shape}"
                )
            out, key_meta = self._embed(img, d[self.box_key])
            if meta is not None and key_meta != meta:
                raise ValueError(f"all keys {self.keys} must share one image size")
            meta = key_meta
            d[self.out_key or key] = out
        if meta is not None:
            d[self.meta_key] = meta
        return d

    def _embed(self, img: torch.Tensor, roi: Any) -> tuple[torch.Tensor, dict]:
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
            _draw_rect(out, box, color, frame)
        if self.layout == "inset" and frame > 0:
            panel = [ix0 - frame, iy0 - frame, ix0 + side + frame, iy0 + side + frame]
            _draw_rect(out, panel, color, frame)
        out[:, iy0 : iy0 + side, ix0 : ix0 + side] = zoomed
        meta = {"box": union, "crop": crop, "inset": inset, "layout": self.layout}
        return out, meta


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] → uint8 RGB PIL image (out-of-range values clipped)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    rgb = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy())
