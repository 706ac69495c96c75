"""Presence balancing: as many "no" as "yes" per label and per kind of box, so neither predicts the answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def balance_presence(
    records: list[dict[str, Any]], rng: np.random.Generator, roi_kind: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Keep as many 'no' as 'yes' per label and ROI kind (all positives kept while negatives suffice).

    ``roi_kind`` maps presence ids to "mask" (mask or decoy box) / "anatomy"; balancing within each kind
    keeps the kind of box from predicting the answer. Groups are visited in sorted order and the surplus drawn
    from ``rng`` without replacement; the records kept stay in their order.
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
