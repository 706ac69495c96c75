"""All candidate questions of one volume: presence (positive, decoy or anatomy box) and abnormality.

Negatives are subsampled later, per label (``balance.py``); location, size and count questions, which need lesion
masks, are in ``lesion_questions.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.ctrate import CTRATE_LABELS, Finding, axial_slice, patient_id
from datamodules.roi_sources import ROIProposal, ROIQuery, ROISource, check_proposal
from datamodules.slabs import slice_spacing
from datamodules.views import ViewSpec, choose_views, shows_lesion
from datamodules.vqa_builder.decoys import PositiveStats, decoy_region, place_box
from datamodules.vqa_builder.geometry import anatomy_roi, midline, side_of, where_text, zone
from datamodules.vqa_builder.record import check_record
from datamodules.vqa_builder.report_text import findings_by_label, report_region
from datamodules.vqa_builder.templates import NORMAL, absent, phrase, seen


class VolumeQuestions:
    """All candidate questions of one volume (negatives are subsampled later, per label).

    ``vol`` is the (1, X, Y, Z) HU volume, ``masks`` its lesion masks (findings, X, Y, Z) or None; ``rng`` draws
    boxes and options, ``region_rng`` the regions of negatives asked of a source (its own stream, so the default
    source's questions do not depend on it). ``records`` collects the questions, ``roi_kind`` the kind of box of each
    presence question ("mask": mask or decoy box, "anatomy"). With ``views`` (``datamodules/views.py``) presence and
    abnormality questions show K candidate views: the usual one, then the source's ``propose_many``.
    """

    def __init__(
        self,
        split: str,
        row: Mapping[str, Any],
        vol: Any,
        findings: list[Finding],
        masks: np.ndarray | None,
        rng: np.random.Generator,
        stats: PositiveStats,
        source: ROISource,
        root: Path,
        region_rng: np.random.Generator,
        views: ViewSpec | None = None,
    ):
        self.split, self.row, self.vol, self.rng, self.stats = split, row, vol, rng, stats
        self.source, self.root, self.region_rng, self.views = source, root, region_rng, views
        self.z_spacing = slice_spacing(vol)
        self.coverage: list[bool] = []  # per positive with a lesion mask: does some view show the lesion?
        self.name = str(row["VolumeName"])
        self.depth = vol.shape[-1]
        self.has_masks = masks is not None
        self.records: list[dict[str, Any]] = []
        self.roi_kind: dict[str, str] = {}  # presence id -> "mask" (mask or decoy box) or "anatomy"
        self.by_label = findings_by_label(findings, masks)

    def add(self, qtype: str, question: str, answer: str, options: list[str], k: int, roi, source, label, why,
            region: str | None = None):  # fmt: skip
        """Append one record (checked by ``check_record``); its id numbers the volume's questions in order.
        ``region``: where the source looks for the question's other views (presence and abnormality only)."""
        views = None
        if region is not None and self.views is not None and self.views.active:
            views, evidence = self.candidate_views(qtype, label, region, (k, roi))
            why = f"Evidence: View {evidence}. {why}"
        if region is not None and label in self.by_label and answer != "no":
            shown = views or [{"shows_lesion": shows_lesion(self.lesion(label), k, 0.0, self.z_spacing)}]
            self.coverage.append(any(v["shows_lesion"] for v in shown))
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
            **({"views": views} if views is not None else {}),
        }
        check_record(rec, self.vol.shape[1:3], f"{self.split} {self.name}")
        self.records.append(rec)

    def lesion(self, label: str) -> np.ndarray | None:
        """The union of the label's lesion masks (X, Y, Z), or None without one."""
        masks = [m for _, m in self.by_label.get(label, [])]
        return np.any(masks, axis=0) if masks else None

    def candidate_views(self, qtype: str, label: str, region: str, primary: tuple[int, list[list[int]]]
                        ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        """(the record's ``views``, the evidence view's number): the question's own view first, then the source's
        candidates (never from lesion masks), ``min_distance_mm`` apart; the evidence is the first view whose slab
        meets the lesion, else the question's own view."""
        query = ROIQuery(self.vol, self.name, self.row, self.root, label, region)
        projection = self.views.projection_for(qtype, label)
        where = f"{self.split} {self.name} {label}"
        views = choose_views(self.source, query, primary, self.views, projection, where, self.lesion(label))
        own = next(i for i, v in enumerate(views, start=1) if v["slice_index"] == primary[0])
        return views, next((i for i, v in enumerate(views, start=1) if v["shows_lesion"]), own)

    def propose(self, label: str, region: str, lesion: np.ndarray | None = None) -> ROIProposal | None:
        """The ROI source's proposal, checked (slice in the volume, boxes inside the slice, none empty)."""
        query = ROIQuery(self.vol, self.name, self.row, self.root, label, region, lesion)
        p = self.source.propose(query)
        return None if p is None else check_proposal(p, self.vol, f"{self.split} {self.name} {label}")

    def where_box(self, label: str, p: ROIProposal) -> str:
        """The "Global" place of a proposal's boxes, for the reasoning."""
        slice_hu = axial_slice(self.vol, p.slice_index)
        spot = np.zeros(slice_hu.shape, bool)
        for x0, y0, x1, y1 in p.boxes:
            spot[y0:y1, x0:x1] = True
        return where_text(label, side_of(spot, midline(slice_hu)), p.slice_index, self.depth)

    def positive_view(self, label: str) -> tuple[int, list[list[int]], str, str]:
        """(slice, [box], roi_source, reasoning) for a present label: its main lesion if masked and the source
        uses lesion masks, else the source's proposal for the region the report names, else anatomy."""
        lesion = None
        if self.source.uses_lesion_masks and label in self.by_label:
            _, lesion = self.by_label[label][int(self.rng.integers(len(self.by_label[label])))]
        p = self.propose(label, report_region(label, self.row), lesion)
        if p is not None:
            return p.slice_index, p.boxes, p.source, f"Global: {self.where_box(label, p)}. Zoom: {seen(label)}."
        k, boxes, region = anatomy_roi(self.vol, label, self.rng)
        where = "cardiac region" if region == "heart" else "both lung fields"
        return k, boxes, "anatomy", f"Global: {where}. Zoom: {seen(label)}."

    def decoy_view(self, label: str) -> tuple[int, list[list[int]], str] | None:
        """(slice, [box], reasoning) of a lesion-like box where ``label`` would be; None if no slice fits."""
        for _ in range(8):
            w, h, frac = self.stats.sample(label, self.rng)
            k = min(max(round(frac * (self.depth - 1)), 0), self.depth - 1)
            slice_hu = axial_slice(self.vol, k)
            region = decoy_region(label, slice_hu)
            if region.any():
                box = place_box(region, w, h, self.rng)
                spot = np.zeros(region.shape, bool)
                spot[box[1] : box[3], box[0] : box[2]] = True
                where = where_text(label, side_of(spot, midline(slice_hu)), k, self.depth)
                return k, [box], f"Global: {where}. Zoom: {absent(label)}."
        return None

    def presence(self, label: str, present: bool) -> None:
        """One presence question: a positive's view, else a decoy, the source's box or an anatomy box."""
        question = f"Is there {phrase(label)} in this CT slice?"
        decoy, proposal, region = None, None, report_region(label, self.row)
        lesion_like = self.source.uses_lesion_masks and self.has_masks
        if not present and lesion_like and self.rng.random() < self.stats.p_decoy(label):
            decoy = self.decoy_view(label)
            if decoy is not None and self.views is not None and self.views.active:
                # Other views are spread over this region: the report's words for an absent label would not be
                # the lobe a positive names, and the views' spread would tell yes from no.
                region = self.stats.sample_region(label, self.region_rng)
        if not present and decoy is None:
            region = self.stats.sample_region(label, self.region_rng)
            proposal = self.propose(label, region)
        if present:
            k, boxes, source, why = self.positive_view(label)
            kind = source
        elif decoy is not None:
            (k, boxes, why), source, kind = decoy, "anatomy", "mask"  # looks like a mask ROI; source is metadata
        elif proposal is not None:
            k, boxes, source = proposal.slice_index, proposal.boxes, proposal.source
            why, kind = f"Global: {self.where_box(label, proposal)}. Zoom: {absent(label)}.", source
        else:
            k, boxes, region = anatomy_roi(self.vol, label, self.rng)
            place = "cardiac region" if region == "heart" else "both lung fields"
            why = f"Global: {place}, {zone(k, self.depth)} level. Zoom: {NORMAL[region]}."
            source = kind = "anatomy"
        answer = "yes" if present else "no"
        self.add("presence", question, answer, ["yes", "no"], k, boxes, source, label, why, region)
        self.roi_kind[self.records[-1]["id"]] = kind

    def abnormality(self, present: list[str], askable: list[str]) -> None:
        """One multiple-choice question: which of four labels the box of a present label shows."""
        masked = [lb for lb in present if lb in self.by_label and self.source.uses_lesion_masks] or present
        label = masked[int(self.rng.integers(len(masked)))]
        pool = [lb for lb in askable if lb not in present] or [lb for lb in CTRATE_LABELS if lb not in present]
        if len(pool) < 3:
            pool += [lb for lb in CTRATE_LABELS if lb not in present and lb not in pool]
        options = [label, *self.rng.choice(pool, size=3, replace=False).tolist()]
        self.rng.shuffle(options)
        k, boxes, source, why = self.positive_view(label)
        question = "Which abnormality is shown in the highlighted region of this CT slice?"
        self.add("abnormality", question, label, options, k, boxes, source, label, why, report_region(label, self.row))
