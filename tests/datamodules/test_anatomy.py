"""The anatomy vocabulary and the one reader of location words (datamodules/anatomy.py)."""

import pytest

from datamodules.anatomy import (
    LOBES,
    LOBES_OF_SIDE,
    REGIONS,
    TOTALSEGMENTATOR_STRUCTURES,
    lobe_name,
    location_words,
    region_of,
)


def test_vocabulary_is_one_list_of_lobes():
    assert LOBES_OF_SIDE == {
        "right": ["right upper lobe", "right middle lobe", "right lower lobe"],
        "left": ["left upper lobe", "left lower lobe"],
    }
    assert set(REGIONS) == set(TOTALSEGMENTATOR_STRUCTURES) and REGIONS[: len(LOBES)] == LOBES


@pytest.mark.parametrize(
    ("label", "text", "region"),
    [
        ("Lung nodule", "A 5 mm nodule in the lower lobe of the right lung.", "right lower lobe"),
        ("Lung nodule", "Nodule in the right middle lobe.", "right middle lobe"),
        ("Consolidation", "Consolidation in the middle lobe of the left lung.", "left lung"),  # no left middle lobe
        ("Pleural effusion", "Left pleural effusion layering in the dependent posterior pleural space.", "left lung"),
        ("Emphysema", "Centrilobular emphysema in the upper lobes of both lungs.", "lungs"),
        ("Lung opacity", "", "lungs"),
        ("Cardiomegaly", "the right heart is enlarged", "heart"),
        ("Arterial wall calcification", "plaques in the descending aorta", "aorta"),
    ],
)
def test_region_of_reads_the_reports_location_words(label, text, region):
    assert region_of(label, text) == region


@pytest.mark.parametrize(
    ("text", "sides", "levels", "lobes"),
    [
        ("A 5 mm nodule in the lower lobe of the right lung.", {"right"}, {"lower"}, {("right", "lower")}),
        ("Nodule in the Right Middle Lobe.", {"right"}, {"middle"}, {("right", "middle")}),
        ("Consolidation in the middle lobe of the left lung.", {"left"}, {"middle"}, {("left", "middle")}),
        ("Right upper lobe and left lower lobe nodules.", {"right", "left"}, {"upper", "lower"},
         {("right", "upper"), ("left", "lower")}),
        ("Emphysema in the upper lobes of both lungs.", {"right", "left"}, {"upper"}, set()),
        ("Bilateral right-sided effusion.", {"right", "left"}, set(), set()),
        ("Nodule in the right upper lobe; left pleural effusion.", {"right", "left"}, {"upper"}, {("right", "upper")}),
        ("", set(), set(), set()),
    ],
)  # fmt: skip
def test_location_words(text, sides, levels, lobes):
    words = location_words(text)
    assert (words.sides, words.levels, words.lobes) == (sides, levels, lobes)


def test_lobe_name_refuses_a_lobe_no_lung_has():
    assert lobe_name("right", "middle") == "right middle lobe"
    assert lobe_name("left", "upper") == "left upper lobe"
    assert lobe_name("left", "middle") is None
