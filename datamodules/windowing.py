"""CT windowing: an (H, W) slice in Hounsfield units → a float32 (3, H, W) image in [0, 1].

`HUWindow` is the array transform (the maths, on a bare slice); its dict version `HUWindowd`
(datamodules/transforms.py) applies it to each key, after MONAI's `ScaleIntensityRange` / `ScaleIntensityRanged`.
Each window is MONAI's `ScaleIntensityRange(a_min=center - width/2, a_max=center + width/2, b_min=0, b_max=1,
clip=True)`.

Conventions: a slice is (H, W), rows anterior→posterior, columns patient right→left.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from monai.config import NdarrayOrTensor
from monai.data import get_track_meta, set_track_meta
from monai.transforms import ScaleIntensityRange, Transform
from monai.utils import convert_to_tensor

# (center, width) in HU. Standard radiology values (Radiopaedia, "Windowing (CT)"); the
# mediastinal window varies between sites (W 350-400, L 40-50), we use L 40 / W 400.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}


def window_scaler(name: str) -> ScaleIntensityRange:
    """MONAI's linear map of window ``name``'s [center - width/2, center + width/2] HU onto [0, 1], clipped.

    Bit for bit the hand-written ``((hu - a_min) / width).clamp(0, 1)`` it replaced
    (tests/datamodules/test_transforms.py checks it on random HU and every synthetic slice): every shipped window
    has integer edges, so ``a_max - a_min`` is exactly ``width``; MONAI's extra ``* (b_max - b_min) + b_min`` is
    ``* 1 + 0``, exact in float32. Raises KeyError for an unknown name.
    """
    center, width = WINDOWS[name]
    return ScaleIntensityRange(a_min=center - width / 2, a_max=center + width / 2, b_min=0.0, b_max=1.0, clip=True)


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """MONAI transforms make plain tensors, not MetaTensors, inside the block.

    `ScaleIntensityRange` wraps its input in a MetaTensor when MONAI's process-wide `get_track_meta()` is on (the
    default), and every op on it then pays for metadata bookkeeping: 4× the time of the maths on a 128×128 slice
    (0.8 ms against 0.2 ms per window), for metadata a windowed 2D slice does not use. The flag is process-wide;
    samples are rendered on one thread per process (DataLoader workers are processes), and it is restored on exit.
    """
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


class HUWindow(Transform):
    """Window an (H, W) HU slice (tensor or array) into a float32 (3, H, W) image in [0, 1].

    One window gives grey replicated to RGB; three give one window per channel (multi-window RGB, in the order
    given). Raises ValueError for an unknown window name, a count other than 1 or 3, or a slice that is not 2D.
    The input is not modified; the output is a plain tensor (no MONAI metadata).
    """

    def __init__(self, windows: Sequence[str] | str = ("lung",)) -> None:
        windows = [windows] if isinstance(windows, str) else list(windows)
        unknown = [w for w in windows if w not in WINDOWS]
        if unknown:
            raise ValueError(f"unknown CT window(s) {unknown}; valid names: {sorted(WINDOWS)}")
        if len(windows) not in (1, 3):
            raise ValueError(f"give 1 window (grey) or 3 windows (one per RGB channel), got {len(windows)}: {windows}")
        self.windows = windows
        self.scalers = [window_scaler(w) for w in windows]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        # track_meta=False: downstream code indexes and writes pixels; a MetaTensor would carry (and slowly
        # update) affine metadata that no longer applies.
        hu = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        if hu.ndim != 2:
            raise ValueError(f"expected a 2D (H, W) HU slice, got shape {tuple(hu.shape)}")
        with _plain_tensors():
            channels = [scale(hu) for scale in self.scalers]
        if len(channels) == 1:
            # repeat, not expand: the zoom embedding and others write pixels per channel.
            return channels[0].repeat(3, 1, 1)
        return torch.stack(channels)
