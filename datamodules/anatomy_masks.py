"""Regions of a chest CT found from HU alone: lungs, their sides and lobes, mediastinum, heart and aorta.

``AnatomyROI`` (``roi_sources.py``) boxes these regions; the region names are ``anatomy.REGIONS``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from datamodules.anatomy import REGIONS
from datamodules.ctrate import largest_component


def anatomy_masks(
    hu: np.ndarray, lung_hu: float = -400.0, soft_tissue: tuple[float, float] = (-200.0, 300.0)
) -> dict[str, np.ndarray]:
    """Regions of a chest CT (X, Y, Z) in LPS from HU alone → {region: bool mask} for every name in ``REGIONS``.

    Lungs: air below ``lung_hu`` in components that do not touch the in-plane border (outside air does): the
    largest, and the second when it is a lung too (at least 30% of the largest's size and half its height; bowel
    gas is neither). Sides: by component when the two lungs are separate, else by the midline (LPS: small x = patient's
    right). Lobes, by position (no fissures at this resolution): right upper = top 40% of that lung's height,
    middle = the next 35% in front of its centre, lower = the rest; left upper = top half. Mediastinum: soft
    tissue between the lungs' centres; heart = its anterior part in the lower half of the lungs, aorta the rest.
    """
    air = hu < lung_hu
    lab, n = ndimage.label(air)
    border = np.unique(np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel()]))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[border] = 0
    sizes[0] = 0
    boxes = ndimage.find_objects(lab)
    order = [int(c) for c in np.argsort(sizes)[::-1][:2] if sizes[c] > 0]

    def height(c: int) -> int:
        return boxes[c - 1][2].stop - boxes[c - 1][2].start

    big = [c for c in order if sizes[c] >= 0.3 * sizes[order[0]] and height(c) >= 0.5 * height(order[0])]
    lungs = np.isin(lab, big) if big else np.zeros_like(air)
    out = {name: np.zeros(hu.shape, bool) for name in REGIONS}
    if not lungs.any():
        return out
    xs = np.arange(hu.shape[0])[:, None, None]
    cx = [float(np.argwhere(lab == c)[:, 0].mean()) for c in big]
    if len(big) == 2 and (cx[0] < hu.shape[0] / 2) != (cx[1] < hu.shape[0] / 2):
        right, left = (lab == big[int(np.argmin(cx))]), (lab == big[int(np.argmax(cx))])
    else:
        mid = float(np.argwhere(lungs)[:, 0].mean())
        right, left = lungs & (xs < mid), lungs & (xs >= mid)
    zs = np.arange(hu.shape[2])[None, None, :]
    ys = np.arange(hu.shape[1])[None, :, None]
    for side, mask in (("right", right), ("left", left)):
        out[f"{side} lung"] = mask
        if not mask.any():
            continue
        pts = np.argwhere(mask)
        z0, z1, cy = pts[:, 2].min(), pts[:, 2].max() + 1, pts[:, 1].mean()
        height = z1 - z0
        if side == "right":
            upper = zs >= z0 + 0.6 * height
            middle = (zs >= z0 + 0.25 * height) & ~upper & (ys < cy)
            out["right upper lobe"], out["right middle lobe"] = mask & upper, mask & middle
            out["right lower lobe"] = mask & ~upper & ~middle
        else:
            upper = zs >= z0 + 0.5 * height
            out["left upper lobe"], out["left lower lobe"] = mask & upper, mask & ~upper
    out["lungs"] = right | left
    if not (right.any() and left.any()):
        return out
    x_r, x_l = (float(np.argwhere(m)[:, 0].mean()) for m in (right, left))
    pts = np.argwhere(lungs)
    y0, y1 = pts[:, 1].min(), pts[:, 1].max() + 1
    z0, z1 = pts[:, 2].min(), pts[:, 2].max() + 1
    cy = pts[:, 1].mean()
    soft = (hu > soft_tissue[0]) & (hu < soft_tissue[1])
    slab = (xs > x_r) & (xs < x_l) & (zs >= z0) & (zs < z1)
    # Posterior bound: the front of the vertebral bodies (bone behind the lungs' centre; the sternum is in front),
    # so paraspinal muscle and the spinal canal stay out of the mediastinum.
    spine = np.argwhere((hu > 300) & slab & (ys >= cy))
    y1 = min(y1, int(spine[:, 1].min())) if len(spine) else y1
    between = slab & (ys >= y0) & (ys < y1)
    mediastinum = largest_component(soft & between & ~lungs)
    out["mediastinum"] = mediastinum
    out["heart"] = largest_component(mediastinum & (ys < cy) & (zs < z0 + 0.5 * (z1 - z0)))
    out["aorta"] = mediastinum & (ys >= cy)
    return out
