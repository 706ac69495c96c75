"""Report text → labels and regions: which CT-RATE label a finding describes, and where the report places it.

Keywords and negation are read sentence by sentence; the location words themselves are read by
``datamodules/anatomy.py`` (the one reader of sides and lobes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from datamodules.anatomy import region_of
from datamodules.ctrate import Finding

# First match wins: specific phrases before generic ones ("nodular consolidation" is consolidation).
KEYWORDS: tuple[tuple[str, str], ...] = (
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
_NEGATION = re.compile(r"\b(no|not|without|absence of|free of|negative for)\b")


def label_of(text: str) -> str | None:
    """CT-RATE label a free-text finding describes, by keyword; None if no label fits."""
    low = text.lower()
    return next((label for label, pattern in KEYWORDS if re.search(pattern, low)), None)


def findings_by_label(findings: list[Finding], masks: np.ndarray | None) -> dict[str, list[tuple[Finding, np.ndarray]]]:
    """Findings with a non-empty lesion mask, by label: {label: [(finding, its mask (X, Y, Z))]}.

    ``masks`` is the volume's lesion masks (findings, X, Y, Z), indexed by ``Finding.index``; None (no masks) or a
    finding no keyword labels gives nothing.
    """
    out: dict[str, list[tuple[Finding, np.ndarray]]] = {}
    for f in findings:
        label = label_of(f.text)
        if label is not None and masks is not None and masks[f.index].any():
            out.setdefault(label, []).append((f, masks[f.index]))
    return out


def _affirms(sentence: str, label: str) -> bool:
    """Whether ``sentence`` reports ``label`` as present ("No effusion on the left." does not)."""
    if label_of(sentence) != label:
        return False
    low = sentence.lower()
    found = re.search(dict(KEYWORDS)[label], low)
    negation = _NEGATION.search(low)
    return found is not None and (negation is None or negation.start() > found.start())


def report_region(label: str, row: Mapping[str, Any]) -> str:
    """The region the report's sentences about ``label`` name (the whole lungs / its organ when they name none).

    ``row`` is a CT-RATE row; its ``Findings_EN`` text (absent or not a string: no sentences) is split into sentences
    and only those affirming ``label`` are read. Returns one of ``anatomy.REGIONS``.
    """
    text = row.get("Findings_EN")
    sentences = re.split(r"(?<=\.)\s+", text) if isinstance(text, str) else []
    return region_of(label, " ".join(s for s in sentences if _affirms(s, label)))
