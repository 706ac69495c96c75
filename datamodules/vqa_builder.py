"""Build CT-RATE-VQA JSONL (one file per split) from CT-RATE + ReXGroundingCT, real or synthetic alike.

Ground truth comes only from what ``datamodules/ctrate.py`` reads: labels CSV (presence), finding texts
and lesion masks (slice, ROI, side, size, count). Volumes without masks get anatomy ROIs and only
presence/abnormality questions.

ROIs must not leak presence answers (the zoom embedding outlines them on the image). Every presence
question shows exactly one box: a positive shows the largest component of its lesion on the lesion's
best slice; a negative in a volume with masks shows a *decoy* box (with the probability that positives of
that label in masked volumes of the split have masks) whose size and relative slice are drawn from
those positives (a fixed plausible range if there are none), placed where the label occurs: lung fields
by HU for lung findings, mediastinal soft tissue (aorta, heart border) for calcifications, the heart region
for cardiomegaly / pericardial effusion. Other negatives, like maskless positives, get one anatomy box.
Presence is balanced yes/no per label *and* per ROI kind (mask-like vs anatomy). ``roi_source`` is
metadata only, never shown to the model: decoys are recorded as "anatomy". Count questions show one box
per nodule on the slice on purpose (the answer is the number of lesions the model must see).

Where a question's box comes from is pluggable (``--roi_source``, datamodules/roi_sources.py). The default,
``MaskROI``, is the above. A source that ignores lesion masks (``AnatomyROI``, ``CAMROI``, ``MaskROI`` with
``lesions: false``) boxes presence and abnormality questions of every volume, positives and negatives alike, and
presence is balanced per label within that source; a negative asks the source about a region drawn from where the
split's reports place that label, so the region named does not give the answer away. The box such a source draws
may still differ between yes and no (an enlarged heart has a larger heart box): it is made from the image alone,
so it is evidence the deployed pipeline has too, not the label leaking. Location, size and count questions keep
their lesion boxes: their answers come from those masks.

    python -m datamodules.vqa_builder --root data/synthetic-ctrate --seed 0
    python -m datamodules.vqa_builder --root data/synthetic-ctrate --out data/synthetic-ctrate/vqa-anatomy \
        --roi_source datamodules.roi_sources.AnatomyROI
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.files import atomic_write_text
from datamodules.ctrate import (
    CTRATE_LABELS,
    SPLITS,
    BadSampleError,
    CTRATEPaths,
    Finding,
    axial_slice,
    bbox_of,
    display_path,
    label_components,
    largest_component,
    load_ct_volume,
    load_grounding,
    load_lesion_mask,
    lung_mask_from_hu,
    patient_id,
    read_split,
)
from datamodules.roi_sources import MaskROI, ROIProposal, ROIQuery, ROISource, check_proposal, main_lesion, region_of

VQA_KEYS = (
    "id",
    "split",
    "patient_id",
    "volume_name",
    "question_type",
    "question",
    "answer",
    "options",
    "slice_index",
    "roi",
    "roi_source",
    "abnormality",
    "reasoning",
)
# First match wins: specific phrases before generic ones ("nodular consolidation" is consolidation).
_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("Pericardial effusion", r"pericardial effusion"),
    ("Pleural effusion", r"effusion"),
    ("Coronary artery wall calcification", r"coronary"),
    ("Cardiomegaly", r"cardiomegaly|enlarged heart|cardiac silhouette is enlarged"),
    ("Consolidation", r"consolidation"),
    ("Lung nodule", r"\bnodules?\b|\bmass\b"),
    ("Arterial wall calcification", r"calcif"),
    ("Emphysema", r"emphysema"),
    ("Atelectasis", r"atelecta"),
    ("Bronchiectasis", r"bronchiecta"),
    ("Interlobular septal thickening", r"septal thickening"),
    ("Peribronchial thickening", r"peribronchial|bronchial wall thickening"),
    ("Lung opacity", r"opacit|ground[- ]glass"),
    ("Pulmonary fibrotic sequela", r"fibro|reticul|honeycomb"),
    ("Mosaic attenuation pattern", r"mosaic"),
    ("Lymphadenopathy", r"lymph"),
    ("Hiatal hernia", r"hiatal"),
    ("Medical material", r"catheter|stent|pacemaker|device"),
)
CARDIAC = {"Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification", "Arterial wall calcification"}
SIDED = {"Lung nodule", "Consolidation", "Pleural effusion", "Atelectasis", "Lung opacity"}
SIZE_OPTIONS = ["small (<5 mm)", "medium (5–10 mm)", "large (>10 mm)"]
COUNT_OPTIONS = ["1", "2", "3 or more"]
LOBES = {
    "right": ["right upper lobe", "right middle lobe", "right lower lobe"],
    "left": ["left upper lobe", "left lower lobe"],
}
_LOBE_RE = re.compile(
    r"\b(upper|middle|lower) lobe of the (right|left) lung\b|\b(right|left) (upper|middle|lower) lobe\b"
)
_SEEN = {
    "Lung nodule": "a small round soft-tissue density within aerated lung",
    "Pleural effusion": "fluid density layering in the dependent pleural space",
    "Consolidation": "a large homogeneous area of parenchymal opacification",
    "Cardiomegaly": "an enlarged cardiac silhouette",
    "Arterial wall calcification": "bright calcific foci along the aortic wall",
    "Coronary artery wall calcification": "bright calcific foci along the coronary course",
    "Emphysema": "patchy areas of very low attenuation",
}
_NORMAL = {
    "lung": "uniformly aerated parenchyma without focal abnormality",
    "heart": "a normal-sized heart without calcific foci",
}
# What a decoy box of a negative shows (Zoom part of the reasoning).
_ABSENT = {
    "Lung nodule": "aerated lung parenchyma without a nodule",
    "Pleural effusion": "aerated lung reaching the pleura without fluid",
    "Consolidation": "aerated lung parenchyma without opacification",
    "Emphysema": "lung parenchyma of normal attenuation without low-density areas",
    "Cardiomegaly": "a normal-sized cardiac silhouette",
    "Pericardial effusion": "a normal pericardium without fluid",
    "Arterial wall calcification": "mediastinal soft tissue and vessel wall without calcific foci",
    "Coronary artery wall calcification": "mediastinal soft tissue and heart border without calcific foci",
}
_CALCIFIC = {"Arterial wall calcification", "Coronary artery wall calcification"}
# Decoy (width, height) px and relative slice range when a split has no masked positive of the label.
_DECOY_FALLBACK: dict[str, tuple[tuple[int, int], tuple[float, float]]] = {
    "Lung nodule": ((2, 6), (0.15, 0.8)),
    "Arterial wall calcification": ((1, 2), (0.0, 1.0)),
    "Coronary artery wall calcification": ((1, 2), (0.15, 0.4)),
    "Cardiomegaly": ((30, 50), (0.15, 0.4)),
}


def label_of(text: str) -> str | None:
    """CT-RATE label a free-text finding describes, by keyword; None if no label fits."""
    low = text.lower()
    return next((label for label, pattern in _KEYWORDS if re.search(pattern, low)), None)


def _phrase(label: str) -> str:
    return {"Lung nodule": "a lung nodule", "Pleural effusion": "a pleural effusion"}.get(label, label.lower())


def _boxes(mask2d: np.ndarray) -> list[list[int]]:
    labels, n = label_components(mask2d)
    return sorted(bbox_of(labels == c) for c in range(1, n + 1))


def _best_slice(mask3d: np.ndarray) -> int:
    return int(np.argmax(mask3d.sum(axis=(0, 1))))


def _heart_box(lungs: np.ndarray) -> list[int] | None:
    """Heart region of a slice: between the lung centroids, from the lungs' anterior edge to their centroid row."""
    lab, n = label_components(lungs)
    if n < 2:
        return None
    cents = sorted((np.argwhere(lab == c).mean(axis=0) for c in range(1, n + 1)), key=lambda c: c[1])
    x0, x1 = int(cents[0][1]), int(np.ceil(cents[-1][1]))
    y0, y1 = bbox_of(lungs)[1], int(np.ceil(np.mean([c[0] for c in cents])))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


def _decoy_region(label: str, slice_hu: np.ndarray) -> np.ndarray:
    """Pixels where a decoy box of ``label`` may be centred on this slice (empty if none)."""
    lungs = lung_mask_from_hu(slice_hu)
    if label not in CARDIAC:
        return lungs
    region = np.zeros(slice_hu.shape, bool)
    heart = _heart_box(lungs)
    if heart is None:
        return region
    if label in _CALCIFIC:  # mediastinal soft tissue between the lungs: aortic wall, heart border
        x0, x1 = heart[0], heart[2]
        y0, y1 = bbox_of(lungs)[1], bbox_of(lungs)[3]
        region[y0:y1, x0:x1] = True
        return region & ~lungs & (slice_hu > -200) & (slice_hu < 300)
    region[(heart[1] + heart[3]) // 2, (heart[0] + heart[2]) // 2] = True
    return region


def _place(region: np.ndarray, w: int, h: int, rng: np.random.Generator) -> list[int]:
    """A w×h box inside the slice, wholly inside ``region`` if possible, else centred on a region pixel."""
    height, width = region.shape
    w, h = max(1, min(w, width)), max(1, min(h, height))
    ii = np.pad(region.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    inside = np.argwhere(sums == w * h)
    if len(inside):
        y0, x0 = (int(v) for v in inside[rng.integers(len(inside))])
    else:
        pts = np.argwhere(region)
        cy, cx = (int(v) for v in pts[rng.integers(len(pts))])
        y0, x0 = min(max(cy - h // 2, 0), height - h), min(max(cx - w // 2, 0), width - w)
    return [x0, y0, x0 + w, y0 + h]


def _zone(k: int, depth: int) -> str:
    return ("lower", "mid", "upper")[min(3 * k // depth, 2)]  # k grows towards Superior


def _midline(slice_hu: np.ndarray) -> float:
    lungs = lung_mask_from_hu(slice_hu)
    if not lungs.any():
        return slice_hu.shape[1] / 2
    x0, _, x1, _ = bbox_of(lungs)
    return (x0 + x1) / 2


def _side(mask2d: np.ndarray, midline: float) -> str:
    """Side of the patient for a 2D mask in display orientation: image left = patient right."""
    cols = np.flatnonzero(mask2d.any(axis=0))
    if cols[-1] < midline:
        return "right"
    return "left" if cols[0] >= midline else "both"


def _where(label: str, side: str, k: int, depth: int) -> str:
    if label in CARDIAC:
        return f"mediastinum and heart, {_zone(k, depth)} thorax"
    place = "both hemithoraces" if side == "both" else f"{side} hemithorax"
    return f"{place}, {_zone(k, depth)} zone"


def anatomy_roi(vol: Any, label: str, rng: np.random.Generator) -> tuple[int, list[list[int]], str]:
    """(slice, [box], region) without masks: both lung fields by HU (one box), or the cardiac region."""
    depth = vol.shape[-1]
    if label in CARDIAC:
        ks = [round(0.3 * (depth - 1))]
    else:
        ks = [int(rng.integers(round(0.3 * depth), round(0.7 * depth) + 1)), depth // 2]
    for k in ks:
        lungs = lung_mask_from_hu(axial_slice(vol, k))
        if not lungs.any():
            continue
        if label not in CARDIAC:
            return k, [bbox_of(lungs)], "lung"
        heart = _heart_box(lungs)
        if heart is not None:
            return k, [heart], "heart"
    k = depth // 2
    return k, [bbox_of(axial_slice(vol, k) > -500)], "heart" if label in CARDIAC else "lung"


def findings_by_label(findings: list[Finding], masks: np.ndarray | None) -> dict[str, list[tuple[Finding, np.ndarray]]]:
    out: dict[str, list[tuple[Finding, np.ndarray]]] = {}
    for f in findings:
        label = label_of(f.text)
        if label is not None and masks is not None and masks[f.index].any():
            out.setdefault(label, []).append((f, masks[f.index]))
    return out


class _PositiveStats:
    """Per label, over the masked volumes of a split: positive main-lesion boxes, and how often positives
    have a mask (the probability that a negative there gets a decoy box)."""

    def __init__(self) -> None:
        self.boxes: dict[str, list[list[tuple[int, int, float]]]] = {}  # per volume: (w, h, k / (depth - 1))
        self.masked: Counter = Counter()
        self.unmasked: Counter = Counter()
        self.regions: dict[str, list[str]] = {}  # where the reports place each label's positives

    def add_regions(self, present: list[str], row: Mapping[str, Any]) -> None:
        for label in present:
            self.regions.setdefault(label, []).append(report_region(label, row))

    def sample_region(self, label: str, rng: np.random.Generator) -> str:
        """Where a positive of ``label`` would be: the report region of a random positive of the split."""
        pool = self.regions.get(label)
        return pool[int(rng.integers(len(pool)))] if pool else region_of(label)

    def add(self, present: list[str], by_label: Mapping[str, list[tuple[Finding, np.ndarray]]]) -> None:
        for label in present:
            if label not in by_label:
                self.unmasked[label] += 1
                continue
            self.masked[label] += 1
            views = []
            for _, m in by_label[label]:
                k, comp = main_lesion(m)
                x0, y0, x1, y1 = bbox_of(comp)
                views.append((x1 - x0, y1 - y0, k / max(m.shape[-1] - 1, 1)))
            self.boxes.setdefault(label, []).append(views)

    def p_decoy(self, label: str) -> float:
        total = self.masked[label] + self.unmasked[label]
        return self.masked[label] / total if total else 0.0

    def sample(self, label: str, rng: np.random.Generator) -> tuple[int, int, float]:
        """(w, h, relative slice) of a random positive of ``label``, or from the fixed fallback range."""
        pool = self.boxes.get(label)
        if pool:
            views = pool[int(rng.integers(len(pool)))]
            return views[int(rng.integers(len(views)))]
        (lo, hi), (f0, f1) = _DECOY_FALLBACK.get(label, ((4, 20), (0.2, 0.8)))
        w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        return w, h, float(rng.uniform(f0, f1))


_NEGATION = re.compile(r"\b(no|not|without|absence of|free of|negative for)\b")


def _affirms(sentence: str, label: str) -> bool:
    """Whether ``sentence`` reports ``label`` as present ("No effusion on the left." does not)."""
    if label_of(sentence) != label:
        return False
    low = sentence.lower()
    found = re.search(dict(_KEYWORDS)[label], low)
    negation = _NEGATION.search(low)
    return found is not None and (negation is None or negation.start() > found.start())


def report_region(label: str, row: Mapping[str, Any]) -> str:
    """The region the report's sentences about ``label`` name (the whole lungs / its organ when they name none)."""
    text = row.get("Findings_EN")
    sentences = re.split(r"(?<=\.)\s+", text) if isinstance(text, str) else []
    return region_of(label, " ".join(s for s in sentences if _affirms(s, label)))


class _VolumeQuestions:
    """All candidate questions of one volume (negatives are subsampled later, per label)."""

    def __init__(
        self,
        split: str,
        row: Mapping[str, Any],
        vol: Any,
        findings: list[Finding],
        masks,
        rng,
        stats,
        source: ROISource,
        root: Path,
        region_rng: np.random.Generator,
    ):
        self.split, self.row, self.vol, self.rng, self.stats = split, row, vol, rng, stats
        self.source, self.root, self.region_rng = source, root, region_rng
        self.name = str(row["VolumeName"])
        self.depth = vol.shape[-1]
        self.has_masks = masks is not None
        self.records: list[dict[str, Any]] = []
        self.roi_kind: dict[str, str] = {}  # presence id -> "mask" (mask or decoy box) or "anatomy"
        self.by_label = findings_by_label(findings, masks)

    def add(self, qtype: str, question: str, answer: str, options: list[str], k: int, roi, source, label, why):
        rec = {
            "id": f"{self.name.removesuffix('.nii.gz')}-{qtype}-{len(self.records)}",
            "split": self.split,
            "patient_id": patient_id(self.name),
            "volume_name": self.name,
            "question_type": qtype,
            "question": question,
            "answer": answer,
            "options": options,
            "slice_index": int(k),
            "roi": roi,
            "roi_source": source,
            "abnormality": label,
            "reasoning": why,
        }
        check_record(rec, self.vol.shape[1:3], f"{self.split} {self.name}")
        self.records.append(rec)

    def propose(self, label: str, region: str, lesion: np.ndarray | None = None) -> ROIProposal | None:
        """The ROI source's proposal, checked (slice in the volume, boxes inside the slice, none empty)."""
        query = ROIQuery(self.vol, self.name, self.row, self.root, label, region, lesion)
        p = self.source.propose(query)
        return None if p is None else check_proposal(p, self.vol, f"{self.split} {self.name} {label}")

    def _where_box(self, label: str, p: ROIProposal) -> str:
        slice_hu = axial_slice(self.vol, p.slice_index)
        spot = np.zeros(slice_hu.shape, bool)
        for x0, y0, x1, y1 in p.boxes:
            spot[y0:y1, x0:x1] = True
        return _where(label, _side(spot, _midline(slice_hu)), p.slice_index, self.depth)

    def positive_view(self, label: str) -> tuple[int, list[list[int]], str, str]:
        """(slice, [box], roi_source, reasoning) for a present label: its main lesion if masked and the source
        uses lesion masks, else the source's proposal for the region the report names, else anatomy."""
        seen = _SEEN.get(label, "an abnormal density")
        lesion = None
        if self.source.uses_lesion_masks and label in self.by_label:
            _, lesion = self.by_label[label][int(self.rng.integers(len(self.by_label[label])))]
        p = self.propose(label, report_region(label, self.row), lesion)
        if p is not None:
            return p.slice_index, p.boxes, p.source, f"Global: {self._where_box(label, p)}. Zoom: {seen}."
        k, boxes, region = anatomy_roi(self.vol, label, self.rng)
        where = "cardiac region" if region == "heart" else "both lung fields"
        return k, boxes, "anatomy", f"Global: {where}. Zoom: {_SEEN.get(label, 'an abnormal density')}."

    def decoy_view(self, label: str) -> tuple[int, list[list[int]], str] | None:
        """(slice, [box], reasoning) of a lesion-like box where ``label`` would be; None if no slice fits."""
        for _ in range(8):
            w, h, frac = self.stats.sample(label, self.rng)
            k = min(max(round(frac * (self.depth - 1)), 0), self.depth - 1)
            slice_hu = axial_slice(self.vol, k)
            region = _decoy_region(label, slice_hu)
            if region.any():
                box = _place(region, w, h, self.rng)
                spot = np.zeros(region.shape, bool)
                spot[box[1] : box[3], box[0] : box[2]] = True
                where = _where(label, _side(spot, _midline(slice_hu)), k, self.depth)
                return k, [box], f"Global: {where}. Zoom: {_ABSENT.get(label, 'no ' + label.lower())}."
        return None

    def presence(self, label: str, present: bool) -> None:
        question = f"Is there {_phrase(label)} in this CT slice?"
        decoy, proposal = None, None
        lesion_like = self.source.uses_lesion_masks and self.has_masks
        if not present and lesion_like and self.rng.random() < self.stats.p_decoy(label):
            decoy = self.decoy_view(label)
        if not present and decoy is None:
            proposal = self.propose(label, self.stats.sample_region(label, self.region_rng))
        if present:
            k, boxes, source, why = self.positive_view(label)
            kind = source
        elif decoy is not None:
            (k, boxes, why), source, kind = decoy, "anatomy", "mask"  # looks like a mask ROI; source is metadata
        elif proposal is not None:
            k, boxes, source = proposal.slice_index, proposal.boxes, proposal.source
            absent = _ABSENT.get(label, "no " + label.lower())
            why, kind = f"Global: {self._where_box(label, proposal)}. Zoom: {absent}.", source
        else:
            k, boxes, region = anatomy_roi(self.vol, label, self.rng)
            place = "cardiac region" if region == "heart" else "both lung fields"
            why = f"Global: {place}, {_zone(k, self.depth)} level. Zoom: {_NORMAL[region]}."
            source = kind = "anatomy"
        self.add("presence", question, "yes" if present else "no", ["yes", "no"], k, boxes, source, label, why)
        self.roi_kind[self.records[-1]["id"]] = kind

    def abnormality(self, present: list[str], askable: list[str]) -> None:
        masked = [lb for lb in present if lb in self.by_label and self.source.uses_lesion_masks] or present
        label = masked[int(self.rng.integers(len(masked)))]
        pool = [lb for lb in askable if lb not in present] or [lb for lb in CTRATE_LABELS if lb not in present]
        if len(pool) < 3:
            pool += [lb for lb in CTRATE_LABELS if lb not in present and lb not in pool]
        options = [label, *self.rng.choice(pool, size=3, replace=False).tolist()]
        self.rng.shuffle(options)
        k, boxes, source, why = self.positive_view(label)
        question = "Which abnormality is shown in the highlighted region of this CT slice?"
        self.add("abnormality", question, label, options, k, boxes, source, label, why)

    def mask_questions(self, spacing: tuple[float, float]) -> None:
        for label, items in sorted(self.by_label.items()):
            if label not in SIDED:
                continue
            noun = {"Lung nodule": "nodule", "Pleural effusion": "pleural effusion"}.get(label, label.lower())
            for finding, m in items:
                k = _best_slice(m)
                sl = m[:, :, k].T
                side = _side(sl, _midline(axial_slice(self.vol, k)))
                if side == "both" or _side(m.any(axis=2).T, _midline(axial_slice(self.vol, k))) != side:
                    continue
                zone, boxes = _zone(k, self.depth), _boxes(sl)
                why = f"Global: {side} hemithorax, {zone} zone. Zoom: {_SEEN.get(label, 'an abnormal density')}."
                q = f"In which lung is the {noun} located?"
                self.add("location", q, f"{side} lung", ["right lung", "left lung"], k, boxes, "mask", label, why)
                lobes = {(g[0] or g[3], g[1] or g[2]) for g in _LOBE_RE.findall(finding.text.lower())}
                if len(lobes) == 1 and next(iter(lobes))[1] == side:
                    answer = f"{side} {next(iter(lobes))[0]} lobe"
                    if answer in LOBES[side]:
                        q = f"Which lobe of the {side} lung contains the {noun}?"
                        self.add("location", q, answer, LOBES[side], k, boxes, "mask", label, why)
        nodules = self.by_label.get("Lung nodule", [])
        for _, m in nodules:
            largest = largest_component(m)
            k = _best_slice(largest)
            x0, y0, x1, y1 = bbox_of(largest[:, :, k].T)
            mm = max((x1 - x0) * spacing[0], (y1 - y0) * spacing[1])
            answer = SIZE_OPTIONS[0 if mm < 5 else 1 if mm <= 10 else 2]
            side = _side(largest[:, :, k].T, _midline(axial_slice(self.vol, k)))
            why = f"Global: {_where('Lung nodule', side, k, self.depth)}. Zoom: round nodule about {mm:.1f} mm across."
            q = "What is the size of the lung nodule in this CT slice?"
            self.add("size", q, answer, SIZE_OPTIONS, k, _boxes(largest[:, :, k].T), "mask", "Lung nodule", why)
        if nodules:
            union = np.any([m for _, m in nodules], axis=0)
            lab, n = label_components(union)
            per_slice = [len(np.unique(lab[:, :, k])) - 1 for k in range(self.depth)]
            k = int(np.argmax(per_slice))
            count = per_slice[k]
            sl = union[:, :, k].T
            side = _side(sl, _midline(axial_slice(self.vol, k)))
            what = {1: "one round nodule", 2: "two separate round nodules"}.get(
                count, f"{count} separate round nodules"
            )
            why = f"Global: {_where('Lung nodule', side, k, self.depth)}. Zoom: {what} in aerated lung."
            q = "How many lung nodules are visible in this CT slice?"
            self.add(
                "count", q, COUNT_OPTIONS[min(count, 3) - 1], COUNT_OPTIONS, k, _boxes(sl), "mask", "Lung nodule", why
            )


def check_record(rec: Mapping[str, Any], shape_xy: tuple[int, int], where: str) -> None:
    """Builder-side validation: exact keys, answer among options, every box inside the (Y, X) slice."""
    if tuple(rec) != VQA_KEYS:
        raise BadSampleError(f"{where}: keys {list(rec)} differ from {list(VQA_KEYS)}")
    if rec["answer"] not in rec["options"]:
        raise BadSampleError(f"{where}: field 'answer' {rec['answer']!r} is not one of {rec['options']}")
    width, height = int(shape_xy[0]), int(shape_xy[1])
    if not rec["roi"]:
        raise BadSampleError(f"{where}: field 'roi' is empty")
    for box in rec["roi"]:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise BadSampleError(f"{where}: field 'roi' {box} is outside the {height}×{width} slice")


def build_split(root: Path, split: str, seed: int, roi_source: ROISource | None = None) -> list[dict[str, Any]]:
    """Questions of one split; ``roi_source`` (default ``MaskROI()``) says where their boxes come from."""
    source = roi_source if roi_source is not None else MaskROI()
    df = read_split(root, split)
    paths = CTRATEPaths(root, split)
    grounding = load_grounding(root)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    # Regions for negatives come from their own stream, so the default source's questions stay as they were.
    region_rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    askable = [lb for lb in CTRATE_LABELS if df[lb].sum() > 0]
    rows = df.to_dict("records")

    def masks_of(row: Mapping[str, Any], findings: list[Finding]) -> np.ndarray | None:
        path = paths.lesion_mask(row["VolumeName"])
        if not findings or not path.is_file():
            return None
        masks = load_lesion_mask(path, row)
        if masks.shape[0] <= max(f.index for f in findings):
            raise BadSampleError(
                f"{display_path(path)}: {masks.shape[0]} channels but findings index up to {findings[-1].index}"
            )
        return masks

    # Pass 1 (masks only): what positives' ROIs look like, so negatives' decoys can look the same.
    stats = _PositiveStats()
    for row in rows:
        findings = grounding.get(row["VolumeName"], [])
        masks = masks_of(row, findings)
        stats.add_regions([lb for lb in askable if row[lb] == 1], row)
        if masks is not None:
            stats.add([lb for lb in askable if row[lb] == 1], findings_by_label(findings, masks))
    records: list[dict[str, Any]] = []
    roi_kind: dict[str, str] = {}
    for row in rows:
        name = row["VolumeName"]
        vol = load_ct_volume(paths.volume(name), row)
        findings = grounding.get(name, [])
        masks = masks_of(row, findings)
        if masks is not None and masks.shape[1:] != tuple(vol.shape[1:]):
            where = display_path(paths.lesion_mask(name))
            raise BadSampleError(f"{where}: mask grid {masks.shape[1:]} differs from the CT {tuple(vol.shape[1:])}")
        vq = _VolumeQuestions(split, row, vol, findings, masks, rng, stats, source, Path(root), region_rng)
        present = [lb for lb in askable if row[lb] == 1]
        # Labels with a mask but 0 in the labels CSV are ambiguous: never asked as negatives.
        for label in askable:
            if label in present or label not in vq.by_label:
                vq.presence(label, label in present)
        if present:
            vq.abnormality(present, askable)
        if masks is not None:
            vq.mask_questions(tuple(float(s) for s in vol.pixdim[:2]))
        records += vq.records
        roi_kind |= vq.roi_kind
    return _balance_presence(records, rng, roi_kind)


def _balance_presence(
    records: list[dict[str, Any]], rng: np.random.Generator, roi_kind: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Keep as many 'no' as 'yes' per label and ROI kind (all positives kept while negatives suffice).

    ``roi_kind`` maps presence ids to "mask" (mask or decoy box) / "anatomy"; balancing within each kind
    keeps the kind of box from predicting the answer.
    """
    roi_kind = roi_kind or {}
    groups: dict[tuple[str, str], dict[str, list[str]]] = {}
    for r in records:
        if r["question_type"] == "presence":
            group = groups.setdefault((r["abnormality"], roi_kind.get(r["id"], "anatomy")), {"yes": [], "no": []})
            group[r["answer"]].append(r["id"])
    drop: set[str] = set()
    for key in sorted(groups):
        yes, no = groups[key]["yes"], groups[key]["no"]
        if len(no) > len(yes):
            drop |= set(rng.choice(no, size=len(no) - len(yes), replace=False).tolist())
        elif len(yes) > len(no):
            drop |= set(rng.choice(yes, size=len(yes) - len(no), replace=False).tolist())
    return [r for r in records if r["id"] not in drop]


BUILD_INFO = "build.json"


def build_info(seed: int, roi_source: ROISource | None, complete: bool = True) -> dict[str, Any]:
    """What a VQA folder was built with (``build.json`` beside its JSONL files)."""
    source = (roi_source if roi_source is not None else MaskROI()).describe()
    info = {"seed": seed, "roi_source": source, "complete": complete}
    return json.loads(json.dumps(info))  # tuples → lists, as read back


def vqa_state(vqa_dir: Path, roi_source: ROISource | None) -> Literal["built", "missing"]:
    """ "built" when ``vqa_dir`` holds a finished build made with ``roi_source``; "missing" when it holds none or
    an interrupted one. A folder built with another source raises: its boxes are not what the config says."""
    info_path = Path(vqa_dir) / BUILD_INFO
    wanted = build_info(0, roi_source)["roi_source"]
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not info.get("complete", True):  # written last before the flag existed
            return "missing"
        built = info["roi_source"]
    elif (Path(vqa_dir) / "train.jsonl").is_file():
        built = build_info(0, None)["roi_source"]  # built before build.json existed: always the default source
    else:
        return "missing"
    if built != wanted:
        raise BadSampleError(
            f"{info_path}: these VQA files were built with roi_source {built['class_path']} {built['init_args']}, "
            f"the config asks for {wanted['class_path']} {wanted['init_args']}; set data.vqa_dir to a folder of its "
            "own for this source"
        )
    return "built"


def build_vqa(
    root: Path, out_dir: Path | None = None, seed: int = 0, roi_source: ROISource | None = None
) -> dict[str, Path]:
    """Write ``<out_dir>/{train,valid}.jsonl`` (default ``root/vqa``) and ``build.json``; returns {split: path}.

    Every file is written atomically (a unique temporary name, then a rename: concurrent builders never clash),
    and ``build.json`` says ``complete: false`` until the last one is in place, so an interrupted build is
    recognised (``vqa_state``) and never half-used.
    """
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / "vqa"
    out_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / BUILD_INFO
    atomic_write_text(info_path, json.dumps(build_info(seed, roi_source, complete=False), indent=1) + "\n")
    written: dict[str, Path] = {}
    for split in SPLITS:
        if not CTRATEPaths(root, split).labels_csv.is_file():
            continue
        records = build_split(root, split, seed, roi_source)
        path = out_dir / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
        written[split] = path
    if not written:
        raise BadSampleError(
            f"{display_path(root)}: no labels CSV for any split under dataset/multi_abnormality_labels"
        )
    atomic_write_text(info_path, json.dumps(build_info(seed, roi_source), indent=1) + "\n")
    return written


def summarize(paths: Mapping[str, Path]) -> str:
    """Small table: questions per split and type, and presence yes/no."""
    counts: dict[str, Counter] = {}
    for split, path in paths.items():
        recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        counts[split] = Counter(r["question_type"] for r in recs)
        counts[split].update(f"presence:{r['answer']}" for r in recs if r["question_type"] == "presence")
    rows = ["presence", "presence:yes", "presence:no", "abnormality", "location", "size", "count"]
    lines = [f"{'question type':<14}" + "".join(f"{s:>8}" for s in counts)]
    lines += [f"{row:<14}" + "".join(f"{c[row]:>8}" for c in counts.values()) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="config")
    parser.add_argument("--root", type=Path, required=True, help="folder holding dataset/ (and rexgroundingct/)")
    parser.add_argument("--out", type=Path | None, default=None, help="output folder (default ROOT/vqa)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--roi_source", type=ROISource | None, default=None, help="where boxes come from (MaskROI)")
    args = parser.instantiate(parser.parse_args(argv))
    paths = build_vqa(args.root, args.out, args.seed, args.roi_source)
    print(summarize(paths))
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
