"""How well each ROI source finds the lesions, where true lesion masks are known (synthetic data, ReXGroundingCT).

For every positive (volume, abnormality) of a split that has lesion masks, each source proposes a slice and box
from what it is allowed to see (lesion masks only for ``MaskROI`` with ``lesions: true``, the upper bound); the
proposal is scored against the true lesion on the proposed slice:

- ``iou>0.3``: the box overlaps a true lesion component's box with IoU above 0.3;
- ``centre_hit``: the box centre lies inside a true lesion component's box;
- ``slice_hit``: the proposed slice shows the lesion at all.

    python -m evaluation.roi_proposals --config configs/experiments/roi_proposals.yaml
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_text
from datamodules.ctrate import (
    CTRATEPaths,
    bbox_of,
    label_components,
    load_ct_volume,
    load_grounding,
    load_lesion_mask,
    read_split,
)
from datamodules.roi_sources import ROIProposal, ROIQuery, ROISource, check_proposal
from datamodules.vqa_builder import findings_by_label, report_region
from evaluation.formatting import fmt, json_safe, markdown_table

RATES = ("iou>0.3", "centre_hit", "slice_hit", "mean_iou")


def _iou(a: list[int], b: list[int]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def score_proposal(p: ROIProposal, truth: np.ndarray) -> dict[str, float]:
    """Scores of one proposal against the true lesion mask (X, Y, Z) of its abnormality."""
    lab, n = label_components(truth[:, :, p.slice_index].T)
    true_boxes = [bbox_of(lab == c) for c in range(1, n + 1)]
    best = max((_iou(box, t) for box in p.boxes for t in true_boxes), default=0.0)
    centres = [((box[0] + box[2]) / 2, (box[1] + box[3]) / 2) for box in p.boxes]
    hit = any(t[0] <= cx < t[2] and t[1] <= cy < t[3] for cx, cy in centres for t in true_boxes)
    return {"iou>0.3": float(best > 0.3), "centre_hit": float(hit), "slice_hit": float(n > 0), "mean_iou": best}


def evaluate_sources(root: str | Path, split: str, sources: dict[str, ROISource]) -> dict[str, Any]:
    """{source: {"all": rates, "per_label": {label: rates}, "n": count, "none": proposals missing}}."""
    root = Path(root)
    paths = CTRATEPaths(root, split)
    grounding = load_grounding(root)
    scores: dict[str, dict[str, list[dict[str, float]]]] = {name: defaultdict(list) for name in sources}
    missing: dict[str, int] = dict.fromkeys(sources, 0)
    for row in read_split(root, split).to_dict("records"):
        name = row["VolumeName"]
        findings = grounding.get(name, [])
        mask_path = paths.lesion_mask(name)
        if not findings or not mask_path.is_file():
            continue
        by_label = findings_by_label(findings, load_lesion_mask(mask_path, row))
        volume = load_ct_volume(paths.volume(name), row)
        for label, items in sorted(by_label.items()):
            if row.get(label) != 1:
                continue
            truth = np.any([m for _, m in items], axis=0)
            for source_name, source in sources.items():
                lesion = items[0][1] if source.uses_lesion_masks else None
                query = ROIQuery(volume, name, row, root, label, report_region(label, row), lesion)
                p = source.propose(query)
                if p is None:
                    missing[source_name] += 1
                    scores[source_name][label].append(dict.fromkeys(RATES, 0.0))
                    continue
                scores[source_name][label].append(score_proposal(check_proposal(p, volume, name), truth))
    out: dict[str, Any] = {}
    for source_name, per_label in scores.items():
        flat = [s for rows in per_label.values() for s in rows]
        out[source_name] = {
            "n": len(flat),
            "none": missing[source_name],
            "all": {r: float(np.mean([s[r] for s in flat])) if flat else float("nan") for r in RATES},
            "per_label": {
                label: {"n": len(rows), **{r: float(np.mean([s[r] for s in rows])) for r in RATES}}
                for label, rows in sorted(per_label.items())
            },
        }
    return out


def render(results: dict[str, Any]) -> str:
    """Markdown: one table of overall rates per source, then one per abnormality and rate."""
    rows = [[name, str(r["n"]), *(fmt(r["all"][k]) for k in RATES)] for name, r in results.items()]
    lines = ["# ROI proposals against true lesion boxes", "", *markdown_table(["source", "n", *RATES], rows)]
    labels = sorted({label for r in results.values() for label in r["per_label"]})
    for rate in ("iou>0.3", "centre_hit"):
        body = [
            [label, *(fmt(r["per_label"].get(label, {}).get(rate, float("nan"))) for r in results.values())]
            for label in labels
        ]
        lines += ["", f"## {rate} per abnormality", "", *markdown_table(["abnormality", *results], body)]
    return "\n".join(lines) + "\n"


def parser():
    """Command-line / YAML arguments (``--config configs/experiments/roi_proposals.yaml``)."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="config")
    p.add_argument("--root", type=Path, default=Path("data/synthetic-ctrate"))
    p.add_argument("--split", type=str, default="valid", help="CT-RATE split (valid = the test questions)")
    p.add_argument("--sources", type=dict[str, ROISource], required=True, help="name → ROI source")
    p.add_argument("--out", type=Path, default=Path("runs/roi_proposals"))
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser()
    args = p.instantiate(p.parse_args(argv))
    results = evaluate_sources(args.root, args.split, args.sources)
    report = render(results)
    atomic_write_text(args.out / "roi_proposals.json", json.dumps(json_safe(results), indent=1) + "\n")
    atomic_write_text(args.out / "roi_proposals.md", report)
    print(report)
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
