"""The CT-RATE 18-abnormality protocol as VQA records: every volume of a split asked about every label.

The protocol the CT-RATE community ranks with (CT-CLIP's zero-shot evaluation, the VLM3D challenge's task 2) scores,
for each volume, a probability for each of the 18 labels (``CTRATE_LABELS``, in CT-CLIP's and the challenge's
column order). A VLM gets there by one presence question per (volume, label), "Is there <label> in this CT slice?"
(the builder's template, ``vqa_builder/questions.py``), and its p(yes) (``evaluation/answers.py``).

The view each question shows is chosen without looking at the label's truth, except through the configured ROI
source itself: where the source uses lesion masks (``MaskROI``) and the volume has a mask of that label, its
lesion box, as the builder shows positives (the oracle the visual-reliance audit measures); for every other
(volume, label) the view the builder gives negatives: a lesion-like decoy box (as often as the split's positives
of that label have masks), else the source's box for a region drawn from where the split's reports place that
label, else an anatomy box. The answer is the labels CSV's (1 → "yes"); reasoning is left empty (a reference trace
would have to know the answer).

The records are built once per VQA folder, ``<vqa_dir>/<protocol>/<split>.jsonl`` with its ``build.json`` (seed
and ROI source), and read back through ``read_vqa_jsonl`` like any VQA file; a folder built with other settings is
rebuilt. On real CT-RATE the build reads every volume of the split once (valid: ~3,000 volumes, ~0.6 s each).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.files import atomic_write_text
from datamodules.ctrate import (
    CTRATE_LABELS,
    SPLITS,
    CTRATEPaths,
    load_ct_volume,
    load_grounding,
    read_split,
)
from datamodules.roi_sources import MaskROI, ROISource
from datamodules.vqa_builder import build_info, findings_by_label
from datamodules.vqa_builder.build import check_mask_grid, lesion_masks
from datamodules.vqa_builder.decoys import PositiveStats
from datamodules.vqa_builder.questions import VolumeQuestions
from datamodules.vqa_records import read_vqa_jsonl

Protocol = Literal["ctrate_18"]


def protocol_file(vqa_dir: str | Path, split: str, protocol: Protocol = "ctrate_18") -> Path:
    """Where the protocol's records of ``split`` live: ``<vqa_dir>/<protocol>/<split>.jsonl``."""
    return Path(vqa_dir) / protocol / f"{split}.jsonl"


def build_protocol_records(
    root: str | Path, split: str, seed: int, roi_source: ROISource | None = None
) -> list[dict[str, Any]]:
    """18 presence records per volume of ``split`` (volumes sorted by name, labels in ``CTRATE_LABELS`` order).

    Same ``root``, ``split``, ``seed`` and source → same records. Views: see the module docstring; the decoy and
    region statistics come from the split's masked positives, as in ``vqa_builder.build_split`` (pass 1).
    Raises ``BadSampleError`` naming the file for a mask with too few channels or off its CT's grid.
    """
    root, source = Path(root), roi_source if roi_source is not None else MaskROI()
    df, paths, grounding = read_split(root, split), CTRATEPaths(root, split), load_grounding(root)
    rows = df.to_dict("records")
    # Streams of their own (index 2, 3), so the protocol never shifts the training questions' draws.
    rng = np.random.default_rng([seed, SPLITS.index(split), 2])
    region_rng = np.random.default_rng([seed, SPLITS.index(split), 3])
    stats = PositiveStats()
    for row in rows:
        present = [lb for lb in CTRATE_LABELS if row[lb] == 1]
        findings = grounding.get(row["VolumeName"], [])
        stats.add_regions(present, row)
        if (masks := lesion_masks(paths, row, findings)) is not None:
            stats.add(present, findings_by_label(findings, masks))
    records: list[dict[str, Any]] = []
    for row in rows:
        name, findings = row["VolumeName"], grounding.get(row["VolumeName"], [])
        vol = load_ct_volume(paths.volume(name), row)
        masks = check_mask_grid(paths, name, lesion_masks(paths, row, findings), vol)
        vq = VolumeQuestions(split, row, vol, findings, masks, rng, stats, source, root, region_rng)
        for label in CTRATE_LABELS:
            # The source's own box where it has one for this label (a lesion mask), else a negative's view.
            vq.presence(label, present=source.uses_lesion_masks and label in vq.by_label)
            vq.records[-1].update(answer="yes" if row[label] == 1 else "no", reasoning="")
        records += vq.records
    return records


def protocol_records(
    root: str | Path,
    vqa_dir: str | Path,
    split: str,
    seed: int,
    roi_source: ROISource | None = None,
    protocol: Protocol = "ctrate_18",
) -> list[dict[str, Any]]:
    """The protocol's records of ``split``, built into ``protocol_file(vqa_dir, split)`` unless already there with
    the same seed and ROI source, then read back with ``read_vqa_jsonl`` (the checks every VQA file gets)."""
    path = protocol_file(vqa_dir, split, protocol)
    info_path, wanted = path.parent / f"{split}.build.json", build_info(seed, roi_source)
    built = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else None
    if built != wanted or not path.is_file():
        records = build_protocol_records(root, split, seed, roi_source)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        atomic_write_text(info_path, json.dumps(wanted, indent=1) + "\n")  # last: a build.json means a whole file
    return read_vqa_jsonl(path, split=split)[0]
