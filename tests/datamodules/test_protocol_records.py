"""The CT-RATE 18-label protocol's questions: every test volume asked about each label, views blind to the truth."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from datamodules.ctrate import CTRATE_LABELS
from datamodules.protocol_records import protocol_file, protocol_records
from datamodules.vqa_builder.templates import phrase


@pytest.fixture(scope="module")
def built(synthetic_root, tmp_path_factory):
    vqa_dir = tmp_path_factory.mktemp("vqa")
    return vqa_dir, protocol_records(synthetic_root, vqa_dir, "valid", seed=0)


def test_every_volume_is_asked_every_label_in_order_with_the_csv_answer(synthetic_root, built):
    _, records = built
    labels = pd.read_csv(synthetic_root / "dataset/multi_abnormality_labels/valid_predicted_labels.csv")
    assert len(records) == 18 * len(labels)
    for i, row in enumerate(labels.to_dict("records")):
        mine = records[18 * i : 18 * (i + 1)]
        assert [r["volume_name"] for r in mine] == [row["VolumeName"]] * 18
        assert [r["abnormality"] for r in mine] == list(CTRATE_LABELS)
        assert [r["answer"] for r in mine] == ["yes" if row[lb] == 1 else "no" for lb in CTRATE_LABELS]
        assert [r["question"] for r in mine] == [f"Is there {phrase(lb)} in this CT slice?" for lb in CTRATE_LABELS]
    assert {r["question_type"] for r in records} == {"presence"} and not any(r["reasoning"] for r in records)


def test_only_the_sources_own_lesion_boxes_depend_on_the_truth(built):
    """MaskROI's lesion box is the oracle (positives with a mask); every other view is a negative's."""
    _, records = built
    assert all(r["answer"] == "yes" for r in records if r["roi_source"] == "mask")
    assert {r["roi_source"] for r in records if r["answer"] == "no"} == {"anatomy"}


def test_records_are_built_once_per_seed(synthetic_root, built):
    vqa_dir, records = built
    path = protocol_file(vqa_dir, "valid")
    stamp = path.stat().st_mtime_ns
    assert protocol_records(synthetic_root, vqa_dir, "valid", seed=0) == records
    assert path.stat().st_mtime_ns == stamp  # read back, not rebuilt
    other = protocol_records(synthetic_root, vqa_dir, "valid", seed=1)
    assert json.loads(path.with_name("valid.build.json").read_text())["seed"] == 1
    assert [r["answer"] for r in other] == [r["answer"] for r in records]
    assert [r["roi"] for r in other] != [r["roi"] for r in records]
