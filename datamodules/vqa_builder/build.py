"""Build the VQA files: every split's questions (two passes over its volumes), written atomically with ``build.json``.

Pass 1 reads the lesion masks only, to learn what the split's positives look like (``decoys.PositiveStats``); pass
2 asks each volume's questions (``questions.py``, ``lesion_questions.py``) and balances presence (``balance.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_text
from datamodules.ctrate import (
    CTRATE_LABELS,
    SPLITS,
    BadSampleError,
    CTRATEPaths,
    Finding,
    display_path,
    load_ct_volume,
    load_grounding,
    load_lesion_mask,
    read_split,
)
from datamodules.roi_sources import MaskROI, ROISource
from datamodules.views import ViewSpec
from datamodules.vqa_builder.balance import balance_presence
from datamodules.vqa_builder.decoys import PositiveStats
from datamodules.vqa_builder.lesion_questions import lesion_questions
from datamodules.vqa_builder.questions import VolumeQuestions
from datamodules.vqa_builder.report_text import findings_by_label
from datamodules.vqa_builder.state import BUILD_INFO, build_info


def lesion_masks(paths: CTRATEPaths, row: Mapping[str, Any], findings: list[Finding]) -> np.ndarray | None:
    """The volume's ReXGroundingCT lesion masks, (findings, X, Y, Z), or None without findings or a mask file.

    Raises BadSampleError naming the file when it has fewer channels than the findings index."""
    path = paths.lesion_mask(row["VolumeName"])
    if not findings or not path.is_file():
        return None
    masks = load_lesion_mask(path, row)
    if masks.shape[0] <= max(f.index for f in findings):
        raise BadSampleError(
            f"{display_path(path)}: {masks.shape[0]} channels but findings index up to {findings[-1].index}"
        )
    return masks


def check_mask_grid(paths: CTRATEPaths, name: str, masks: np.ndarray | None, volume: Any) -> np.ndarray | None:
    """``masks`` unchanged when they lie on ``volume``'s (X, Y, Z) grid (or are None). Raises BadSampleError naming
    the mask file otherwise."""
    if masks is not None and masks.shape[1:] != tuple(volume.shape[1:]):
        where = display_path(paths.lesion_mask(name))
        raise BadSampleError(f"{where}: mask grid {masks.shape[1:]} differs from the CT {tuple(volume.shape[1:])}")
    return masks


def build_split(
    root: Path,
    split: str,
    seed: int,
    roi_source: ROISource | None = None,
    views: ViewSpec | None = None,
    coverage: list[bool] | None = None,
) -> list[dict[str, Any]]:
    """Questions of one split; ``roi_source`` (default ``MaskROI()``) says where their boxes come from, ``views``
    how many candidate views presence and abnormality questions show (``datamodules/views.py``; default one slice).
    ``coverage`` receives, per positive with a lesion mask, whether some view shows the lesion.

    The same ``root``, ``split``, ``seed``, source and views give the same records, in the same order. Raises
    ``BadSampleError`` naming the file when a lesion mask has too few channels or lies off its CT's grid, and
    when a record or a source's proposal fails its check.
    """
    source = roi_source if roi_source is not None else MaskROI()
    df = read_split(root, split)
    paths = CTRATEPaths(root, split)
    grounding = load_grounding(root)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    # Regions for negatives come from their own stream, so the default source's questions stay as they were.
    region_rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    askable = [lb for lb in CTRATE_LABELS if df[lb].sum() > 0]
    rows = df.to_dict("records")

    # Pass 1 (masks only): what positives' ROIs look like, so negatives' decoys can look the same.
    stats = PositiveStats()
    for row in rows:
        findings = grounding.get(row["VolumeName"], [])
        masks = lesion_masks(paths, row, findings)
        stats.add_regions([lb for lb in askable if row[lb] == 1], row)
        if masks is not None:
            stats.add([lb for lb in askable if row[lb] == 1], findings_by_label(findings, masks))
    records: list[dict[str, Any]] = []
    roi_kind: dict[str, str] = {}
    for row in rows:
        name = row["VolumeName"]
        vol = load_ct_volume(paths.volume(name), row)
        findings = grounding.get(name, [])
        masks = check_mask_grid(paths, name, lesion_masks(paths, row, findings), vol)
        vq = VolumeQuestions(split, row, vol, findings, masks, rng, stats, source, Path(root), region_rng, views)
        present = [lb for lb in askable if row[lb] == 1]
        # Labels with a mask but 0 in the labels CSV are ambiguous: never asked as negatives.
        for label in askable:
            if label in present or label not in vq.by_label:
                vq.presence(label, label in present)
        if present:
            vq.abnormality(present, askable)
        if masks is not None:
            lesion_questions(vq, tuple(float(s) for s in vol.pixdim[:2]))
        records += vq.records
        roi_kind |= vq.roi_kind
        if coverage is not None:
            coverage += vq.coverage
    return balance_presence(records, rng, roi_kind)


def build_vqa(
    root: Path,
    out_dir: Path | None = None,
    seed: int = 0,
    roi_source: ROISource | None = None,
    views: ViewSpec | None = None,
) -> dict[str, Path]:
    """Write ``<out_dir>/{train,valid}.jsonl`` (default ``root/vqa``) and ``build.json``; returns {split: path}.
    ``build.json`` also says, per split, how often some view of a positive question shows its lesion.

    Every file is written atomically (a unique temporary name, then a rename: concurrent builders never clash),
    and ``build.json`` says ``complete: false`` until the last one is in place, so an interrupted build is
    recognised (``vqa_state``) and never half-used.
    """
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root / "vqa"
    out_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / BUILD_INFO
    atomic_write_text(info_path, json.dumps(build_info(seed, roi_source, views, complete=False), indent=1) + "\n")
    written: dict[str, Path] = {}
    coverage: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        if not CTRATEPaths(root, split).labels_csv.is_file():
            continue
        shown: list[bool] = []
        records = build_split(root, split, seed, roi_source, views, shown)
        coverage[split] = {
            "positives_with_masks": len(shown),
            "some_view_shows_lesion": float(np.mean(shown)) if shown else None,
        }
        path = out_dir / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
        written[split] = path
    if not written:
        raise BadSampleError(
            f"{display_path(root)}: no labels CSV for any split under dataset/multi_abnormality_labels"
        )
    info = build_info(seed, roi_source, views) | {"lesion_coverage": coverage}
    atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")
    return written
