"""Questions answered by lesion masks: which lung and lobe, nodule size, nodule count.

Their boxes are the lesions' own (one per component on the slice: a count question shows every nodule on purpose,
the answer is how many the model must see). A lobe is asked only when the finding's text names exactly one lobe,
on the side the mask is on.
"""

from __future__ import annotations

import numpy as np

from datamodules.anatomy import LOBES_OF_SIDE, location_words
from datamodules.ctrate import axial_slice, bbox_of, label_components, largest_component
from datamodules.vqa_builder.geometry import best_slice, component_boxes, midline, side_of, where_text, zone
from datamodules.vqa_builder.questions import VolumeQuestions
from datamodules.vqa_builder.templates import COUNT_OPTIONS, SIDED, SIZE_OPTIONS, seen


def location_questions(vq: VolumeQuestions) -> None:
    """Which lung (and which lobe, when the finding names one) holds each one-sided masked finding of ``vq``."""
    for label, items in sorted(vq.by_label.items()):
        if label not in SIDED:
            continue
        noun = {"Lung nodule": "nodule", "Pleural effusion": "pleural effusion"}.get(label, label.lower())
        for finding, m in items:
            k = best_slice(m)
            sl = m[:, :, k].T
            side = side_of(sl, midline(axial_slice(vq.vol, k)))
            if side == "both" or side_of(m.any(axis=2).T, midline(axial_slice(vq.vol, k))) != side:
                continue
            boxes = component_boxes(sl)
            why = f"Global: {side} hemithorax, {zone(k, vq.depth)} zone. Zoom: {seen(label)}."
            q = f"In which lung is the {noun} located?"
            vq.add("location", q, f"{side} lung", ["right lung", "left lung"], k, boxes, "mask", label, why)
            lobes = location_words(finding.text).lobes
            if len(lobes) == 1 and next(iter(lobes))[0] == side:
                answer = f"{side} {next(iter(lobes))[1]} lobe"
                if answer in LOBES_OF_SIDE[side]:
                    q = f"Which lobe of the {side} lung contains the {noun}?"
                    vq.add("location", q, answer, LOBES_OF_SIDE[side], k, boxes, "mask", label, why)


def nodule_questions(vq: VolumeQuestions, spacing: tuple[float, float]) -> None:
    """Size of each masked nodule (``spacing``: in-plane (X, Y) mm per pixel) and the count on the fullest slice."""
    nodules = vq.by_label.get("Lung nodule", [])
    for _, m in nodules:
        largest = largest_component(m)
        k = best_slice(largest)
        x0, y0, x1, y1 = bbox_of(largest[:, :, k].T)
        mm = max((x1 - x0) * spacing[0], (y1 - y0) * spacing[1])
        answer = SIZE_OPTIONS[0 if mm < 5 else 1 if mm <= 10 else 2]
        side = side_of(largest[:, :, k].T, midline(axial_slice(vq.vol, k)))
        why = f"Global: {where_text('Lung nodule', side, k, vq.depth)}. Zoom: round nodule about {mm:.1f} mm across."
        q = "What is the size of the lung nodule in this CT slice?"
        vq.add("size", q, answer, SIZE_OPTIONS, k, component_boxes(largest[:, :, k].T), "mask", "Lung nodule", why)
    if nodules:
        union = np.any([m for _, m in nodules], axis=0)
        lab, n = label_components(union)
        per_slice = [len(np.unique(lab[:, :, k])) - 1 for k in range(vq.depth)]
        k = int(np.argmax(per_slice))
        count = per_slice[k]
        sl = union[:, :, k].T
        side = side_of(sl, midline(axial_slice(vq.vol, k)))
        what = {1: "one round nodule", 2: "two separate round nodules"}.get(count, f"{count} separate round nodules")
        why = f"Global: {where_text('Lung nodule', side, k, vq.depth)}. Zoom: {what} in aerated lung."
        q = "How many lung nodules are visible in this CT slice?"
        answer = COUNT_OPTIONS[min(count, 3) - 1]
        vq.add("count", q, answer, COUNT_OPTIONS, k, component_boxes(sl), "mask", "Lung nodule", why)


def lesion_questions(vq: VolumeQuestions, spacing: tuple[float, float]) -> None:
    """Location, size and count questions of a volume with lesion masks, in that order."""
    location_questions(vq)
    nodule_questions(vq, spacing)
