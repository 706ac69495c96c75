"""Regions of a chest CT from HU alone (datamodules/anatomy_masks.py), against the synthetic phantom's truth."""

import numpy as np
import pytest

from datamodules.anatomy import REGIONS
from datamodules.anatomy_masks import anatomy_masks
from datamodules.synthetic_ctrate import make_phantom


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anatomy_finds_the_lungs(seed):
    ph = make_phantom(np.random.default_rng([7, seed]), findings=False)
    masks = anatomy_masks(ph.hu)
    assert _dice(masks["lungs"], ph.lungs) > 0.9
    for ours, theirs in [("right lung", "lung_lower_lobe_right"), ("left lung", "lung_upper_lobe_left")]:
        assert (masks[ours] & ph.regions[theirs]).sum() / ph.regions[theirs].sum() > 0.95  # sides not swapped
    for lobe in ("right upper lobe", "right lower lobe", "left upper lobe", "left lower lobe"):
        side, part, _ = lobe.split()
        assert _dice(masks[lobe], ph.regions[f"lung_{part}_lobe_{side}"]) > 0.85
    assert _dice(masks["heart"], ph.regions["heart"]) > 0.6


def test_anatomy_of_air_only_is_empty():
    masks = anatomy_masks(np.full((32, 32, 8), -1000.0, np.float32))
    assert not any(m.any() for m in masks.values())


def test_every_region_is_named():
    masks = anatomy_masks(make_phantom(np.random.default_rng([7, 0]), findings=False).hu)
    assert tuple(masks) == REGIONS
