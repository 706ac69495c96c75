"""Dict transforms from a 2D HU slice to the image the model sees, and the hand-off to the image processor.

As MONAI's ``dictionary.py`` to its ``array.py``: each dict transform is a thin loop over keys around an array
transform that holds the maths. `HUWindowd` wraps `datamodules.windowing.HUWindow` (HU → (3, H, W) in [0, 1]);
`ZoomEmbedd` wraps `datamodules.zoom.ZoomEmbed` (the coarse-to-fine "zoom-in embedding"); `ConditionViewd` wraps
`datamodules.image_conditions.condition_view` (the audit's pixel conditions); `to_pil` hands the result
to the HF image processor; `one_intra_op_thread` keeps rendering independent of the machine's cores.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from PIL import Image

from datamodules.image_conditions import NEEDS_ZOOM, PIXEL_CONDITIONS, condition_view
from datamodules.windowing import HUWindow
from datamodules.zoom import ZoomEmbed


class HUWindowd(MapTransform):
    """Dict version of `HUWindow`: each of ``keys``, an (H, W) HU slice, → a float32 (3, H, W) image in [0, 1].

    One window gives grey replicated to RGB; three give one window per channel. Raises ValueError as `HUWindow`
    does (unknown window, 1 or 3 windows, a slice that is not 2D), naming the key for a bad slice.
    """

    def __init__(
        self,
        keys: KeysCollection,
        windows: Sequence[str] | str = ("lung",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.window = HUWindow(windows)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.window(d[key])
            except ValueError as e:
                raise ValueError(f"'{key}': {e}") from e
        return d


class ZoomEmbedd(MapTransform):
    """Dict version of `ZoomEmbed`: embeds the zoomed ROI ``data[box_key]`` into each of ``keys``.

    ``settings`` are `ZoomEmbed`'s keywords (layout, margin, min_crop, inset_fraction, outline_color,
    outline_width), passed on so their defaults and checks live in one place. The result goes to ``out_key`` (one
    key only) or replaces the key; ``data[meta_key]`` receives `ZoomEmbed.embed`'s placement record. All `keys`
    must share one size, since the boxes are in that slice's pixels. Raises ValueError as `ZoomEmbed` does, naming
    the key; TypeError for an unknown setting.
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_key: str = "roi",
        out_key: str | None = None,
        meta_key: str = "zoom_meta",
        allow_missing_keys: bool = False,
        **settings: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.zoom = ZoomEmbed(**settings)
        if out_key is not None and len(self.keys) != 1:
            raise ValueError(f"out_key needs exactly one key, got keys {self.keys}")
        self.box_key = box_key
        self.out_key = out_key
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = None
        for key in self.key_iterator(d):
            try:
                out, key_meta = self.zoom.embed(d[key], d[self.box_key])
            except ValueError as e:
                raise ValueError(f"'{key}': {e}") from e
            if meta is not None and key_meta != meta:
                raise ValueError(f"all keys {self.keys} must share one image size")
            meta = key_meta
            d[self.out_key or key] = out
        if meta is not None:
            d[self.meta_key] = meta
        return d


class ConditionViewd(MapTransform):
    """Dict version of `condition_view`: replaces each of ``keys`` (the windowed global view) with the image of pixel
    condition ``mode``, from ``data[zoomed_key]`` and ``data[meta_key]`` (`ZoomEmbedd` with ``out_key=zoomed_key``;
    absent without a zoom) and the boxes ``data[box_key]``. ``outline_color`` / ``outline_width``: the zoom's own.
    Raises ValueError as `condition_view` does, naming the key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str,
        zoomed_key: str = "zoomed",
        meta_key: str = "zoom_meta",
        box_key: str = "roi",
        outline_color: torch.Tensor | None = None,
        outline_width: int = 1,
        blank_value: float = 0.5,
    ) -> None:
        super().__init__(keys)
        self.mode, self.zoomed_key, self.meta_key, self.box_key = mode, zoomed_key, meta_key, box_key
        color = torch.tensor([1.0, 1.0, 0.0]) if outline_color is None else outline_color
        self.outline, self.blank_value = (color, outline_width), blank_value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = condition_view(
                    self.mode, d[key], d.pop(self.zoomed_key, None), d.get(self.meta_key), d[self.box_key],
                    self.outline, self.blank_value,
                )  # fmt: skip
            except ValueError as e:
                raise ValueError(f"'{key}': {e}") from e
        return d


def condition_steps(condition: Any, zoom: ZoomEmbedd | None, resize: Any) -> list[Any]:
    """The last steps of rendering: ``resize``, with the step that draws a pixel condition
    (``image_conditions.ImageCondition``) before it, or after it for ``blank`` (so that the blank stays exactly
    uniform). ``zoom``: the `ZoomEmbedd` writing to ``zoomed``, or None. Raises ValueError for a zoom condition
    without a zoom."""
    mode = getattr(condition, "name", "original")
    if mode not in PIXEL_CONDITIONS:
        return [resize]
    if zoom is None and mode in NEEDS_ZOOM:
        raise ValueError(f"image_condition {mode} needs the zoom embedding, but data.zoom is null")
    outline = (zoom.zoom.outline_color, zoom.zoom.outline_width) if zoom is not None else (None, 1)
    step = ConditionViewd("image", mode, outline_color=outline[0], outline_width=outline[1],
                          blank_value=condition.blank_value)  # fmt: skip
    return [resize, step] if mode == "blank" else [step, resize]


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] → uint8 RGB PIL image (out-of-range values clipped)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    rgb = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(rgb.permute(1, 2, 0).cpu().numpy())


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Torch ops on one thread inside the block, as in a DataLoader worker (which sets this for its whole life).

    Rendering and encoding a sample use it wherever they run (main process with ``num_workers: 0``, ``cli.py ask``):
    bilinear resizing rounds differently on one thread and on several (by one float ulp, sometimes a grey level
    after quantisation), so without it an image depended on num_workers and on the machine's cores. It is also
    faster: a sample's tensors (a 3×112×112 image) are too small to gain from parallel kernels, and every parallel
    kernel waits for all threads of the pool, which on a busy machine made a sample 10-30× slower
    (benchmarks/data_path.py). Decoding a volume, large enough to gain, keeps the pool.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
