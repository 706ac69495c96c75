"""Image conditions of the visual-reliance audit (``evaluation/audit.py``): the same question, another image.

Two kinds, both applied by ``CTVQADataset`` so every image is rendered by the training code:

- **pixel** conditions change what is drawn from the question's own slice and box (`condition_view`, wrapped by
  ``transforms.ConditionViewd``): ``blank`` (a uniform image of the same size), ``global_only`` (no inset, no
  outline), ``outline_only`` (box drawn, no inset), ``zoom_only`` (the inset and its frame, the global view black);
- **record** conditions change which slice and box are drawn (``record_views.RecordViews``): ``shuffled``
  (another question's image and box, of the same question type), ``wrong_region`` (the box moved to a lesion-free
  place of the same size on the same slice), ``box_source`` (the box another ROI source proposes;
  ``datamodules/roi_sources.py``).

Boxes are ``[x0, y0, x1, y1]`` display pixels of the axial slice, exclusive ends (``datamodules/boxes.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from common.checkpoint_types import allow_in_checkpoints
from datamodules.zoom import draw_rect

ConditionName = Literal[
    "original", "blank", "shuffled", "global_only", "outline_only", "zoom_only", "wrong_region", "box_source"
]
PIXEL_CONDITIONS = ("blank", "global_only", "outline_only", "zoom_only")
NEEDS_ZOOM = ("global_only", "outline_only", "zoom_only")
LESION_BOX_TYPES = ("location", "size", "count")  # their answers come from the lesion's own box: kept


@dataclass
class ImageCondition:
    """Which image a question is shown with (``data.image_condition``; null: ``original``).

    Attributes:
        name: the condition (module docstring).
        seed: of the shuffle and of the wrong region's place (per question, so independent of order and workers).
        blank_value: the grey level of ``blank``, in [0, 1].
        roi_source: ``box_source``'s source as ``{class_path, init_args}`` (e.g. ``datamodules.roi_sources.AnatomyROI``
            or ``lightning_modules.roi_classifier.CAMROI`` with its checkpoint); plain data, so it can sit in
            hyperparameters.
    """

    name: ConditionName = "original"
    seed: int = 0
    blank_value: float = 0.5
    roi_source: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.name == "box_source" and not self.roi_source:
            raise ValueError("image_condition box_source needs roi_source: {class_path: ..., init_args: ...}")
        if not 0.0 <= self.blank_value <= 1.0:
            raise ValueError(f"image_condition.blank_value must be in [0, 1], got {self.blank_value}")


allow_in_checkpoints(ImageCondition)


def condition_view(
    mode: str,
    global_view: torch.Tensor,
    zoomed: torch.Tensor | None,
    zoom_meta: Mapping[str, Any] | None,
    boxes: Sequence[Sequence[int]],
    outline: tuple[torch.Tensor, int],
    blank_value: float = 0.5,
) -> torch.Tensor:
    """The image of pixel condition ``mode``, the size of the original (``zoomed``, else ``global_view``).

    ``global_view``: the windowed (3, H, W) slice; ``zoomed``: ``ZoomEmbed``'s output for it ((3, H, W) inset or
    (3, H, 2W) side by side) with its placement record ``zoom_meta``; ``outline``: (RGB colour, width in px).
    Raises ValueError for an unknown mode, or one that needs the zoom when there is none.
    """
    shown = zoomed if zoomed is not None else global_view
    if mode == "blank":
        return torch.full_like(shown, blank_value)
    if mode not in NEEDS_ZOOM:
        raise ValueError(f"unknown pixel condition {mode!r} (known: {PIXEL_CONDITIONS})")
    if zoomed is None or zoom_meta is None:
        raise ValueError(f"image condition {mode} needs the zoom embedding (data.zoom is null)")
    out = zoomed.new_zeros(zoomed.shape)
    height, width = global_view.shape[-2:]
    if mode == "zoom_only":
        color, frame = outline
        x0, y0, x1, y1 = zoom_meta["inset"]
        if zoom_meta["layout"] == "inset":  # the inset's frame with it
            x0, y0, x1, y1 = max(x0 - frame, 0), max(y0 - frame, 0), min(x1 + frame, width), min(y1 + frame, height)
        out[:, y0:y1, x0:x1] = zoomed[:, y0:y1, x0:x1]
        return out
    out[:, :, :width] = global_view
    if mode == "outline_only":
        color, frame = outline
        for box in boxes:
            draw_rect(out, box, color.to(out.device, out.dtype), frame)
    return out


def shuffle_partners(records: Sequence[Mapping[str, Any]], seed: int) -> list[int]:
    """For each record, the index of the record whose image it is shown with under ``shuffled``: a random
    derangement within each question type (one cycle through a seeded permutation), so no question keeps its own
    image (a type with a single question keeps it); then targets are swapped so that, where the type allows, no
    question is shown another question's image of its own volume (which may be the same slice and box)."""
    rng = np.random.default_rng(seed)
    partner = list(range(len(records)))
    volume = [r["volume_name"] for r in records]
    by_type: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_type.setdefault(str(r["question_type"]), []).append(i)
    for qtype in sorted(by_type):
        order = rng.permutation(by_type[qtype]).tolist()
        for a, b in zip(order, order[1:] + order[:1], strict=True):
            partner[a] = b
        for a in order:
            if volume[partner[a]] != volume[a]:
                continue
            for b in order:  # swapping two targets keeps a permutation without fixed points
                if volume[partner[b]] != volume[a] and volume[partner[a]] != volume[b]:
                    partner[a], partner[b] = partner[b], partner[a]
                    break
    return partner


def wrong_region_boxes(
    boxes: Sequence[Sequence[int]], lesion: np.ndarray, body: np.ndarray, rng: np.random.Generator
) -> list[list[int]] | None:
    """``boxes`` moved together, by one offset drawn from ``rng``, to a place of the slice where their union box
    holds no pixel of ``lesion`` (H, W bool), does not overlap the original union box, and whose centre lies in
    ``body`` (H, W bool); None when no such place exists. Uses a summed-area table: every place is checked."""
    height, width = lesion.shape
    ux0, uy0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    ux1, uy1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    w, h = ux1 - ux0, uy1 - uy0
    table = np.pad(lesion.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys, xs = np.mgrid[0 : height - h + 1, 0 : width - w + 1]
    inside = table[ys + h, xs + w] - table[ys, xs + w] - table[ys + h, xs] + table[ys, xs]
    apart = (xs + w <= ux0) | (xs >= ux1) | (ys + h <= uy0) | (ys >= uy1)
    centred = body[ys + h // 2, xs + w // 2]
    candidates = np.flatnonzero((inside == 0) & apart & centred)
    if candidates.size == 0:
        return None
    pick = int(rng.choice(candidates))
    dy, dx = int(ys.flat[pick]) - uy0, int(xs.flat[pick]) - ux0
    return [[b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy] for b in boxes]
