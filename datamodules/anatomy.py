"""The chest anatomy vocabulary (lobes, regions, which findings sit in an organ) and the one reader of location words.

Every place that names a lobe or a region takes the names from here: the VQA builder's lobe questions and report
regions, the ROI sources' region masks (``roi_sources.py``, ``anatomy_masks.py``) and the ``ask`` command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
# The lobes of each lung, as answer options (the left lung has no middle lobe).
LOBES_OF_SIDE: dict[str, list[str]] = {
    side: [lobe for lobe in LOBES if lobe.startswith(f"{side} ")] for side in ("right", "left")
}
REGIONS = (*LOBES, "right lung", "left lung", "lungs", "heart", "aorta", "mediastinum")
# Findings whose place is an organ, whatever the sentence says; the rest are placed in the lungs by side and lobe.
ORGAN_OF = {
    "Cardiomegaly": "heart",
    "Pericardial effusion": "heart",
    "Coronary artery wall calcification": "heart",
    "Arterial wall calcification": "aorta",
    "Lymphadenopathy": "mediastinum",
    "Hiatal hernia": "mediastinum",
}
# TotalSegmentator (task "total") structure files per region; RadGenome-ChestCT or other region masks map here too.
TOTALSEGMENTATOR_STRUCTURES: dict[str, list[str]] = {
    "right upper lobe": ["lung_upper_lobe_right"],
    "right middle lobe": ["lung_middle_lobe_right"],
    "right lower lobe": ["lung_lower_lobe_right"],
    "left upper lobe": ["lung_upper_lobe_left"],
    "left lower lobe": ["lung_lower_lobe_left"],
    "right lung": ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"],
    "left lung": ["lung_upper_lobe_left", "lung_lower_lobe_left"],
    "lungs": [
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
    ],
    "heart": ["heart"],
    "aorta": ["aorta"],
    "mediastinum": ["heart", "aorta", "esophagus", "trachea"],
}

_SIDE = r"(right|left)"
_LEVEL = r"(upper|middle|lower)"
_SIDE_WORD = {side: re.compile(rf"\b{side}\b") for side in ("right", "left")}
_BOTH_SIDES = re.compile(r"\b(both|bilateral)\b")
_LEVEL_WORD = re.compile(rf"\b{_LEVEL} lobes?\b")
_LOBE_PHRASE = re.compile(rf"\b{_LEVEL} lobe of the {_SIDE} lung\b|\b{_SIDE} {_LEVEL} lobe\b")


@dataclass(frozen=True)
class LocationWords:
    """The location words of a text, lower-cased.

    Attributes:
        sides: sides named anywhere ("right", "left"); both when the text says "both" or "bilateral".
        levels: lobe levels named with "lobe(s)" ("upper", "middle", "lower"), with or without a side.
        lobes: (side, level) of every explicit lobe phrase, "right upper lobe" or "upper lobe of the right lung",
            including ones no lung has ("left middle lobe"): the caller decides what to do with those.
    """

    sides: frozenset[str]
    levels: frozenset[str]
    lobes: frozenset[tuple[str, str]]


def location_words(text: str) -> LocationWords:
    """The sides, lobe levels and explicit lobe phrases ``text`` names (see ``LocationWords``)."""
    low = text.lower()
    sides = {side for side, word in _SIDE_WORD.items() if word.search(low)}
    if _BOTH_SIDES.search(low):
        sides = {"right", "left"}
    lobes = {(g[1] or g[2], g[0] or g[3]) for g in _LOBE_PHRASE.findall(low)}
    return LocationWords(frozenset(sides), frozenset(_LEVEL_WORD.findall(low)), frozenset(lobes))


def lobe_name(side: str, level: str) -> str | None:
    """The lobe "<side> <level> lobe" if a lung has it (one of ``LOBES``), else None ("left middle lobe")."""
    name = f"{side} {level} lobe"
    return name if name in LOBES else None


def region_of(label: str, text: str = "") -> str:
    """The region a finding of ``label`` lies in, from the report's words about it (one of ``REGIONS``).

    An organ finding (``ORGAN_OF``) is in its organ; otherwise one side named gives that lung, or its lobe when
    exactly one lobe level is named and that lung has it; no side or both sides give "lungs".
    """
    if label in ORGAN_OF:
        return ORGAN_OF[label]
    words = location_words(text)
    if len(words.sides) != 1:
        return "lungs"
    side = next(iter(words.sides))
    if len(words.levels) == 1 and (lobe := lobe_name(side, next(iter(words.levels)))) is not None:
        return lobe
    return f"{side} lung"
