"""CT-RATE-VQA builder (datamodules/vqa_builder/): keys, ROIs from masks, balance, agreement."""

import json
from collections import Counter

import pytest

from datamodules.ctrate import CTRATEPaths, bbox_of, load_grounding, load_lesion_mask, read_split
from datamodules.synthetic_ctrate import SHAPE, generate
from datamodules.vqa_builder import VQA_KEYS, build_vqa, label_of


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate(root, n=10, seed=0)
    paths = build_vqa(root, seed=0)
    recs = {s: [json.loads(line) for line in p.read_text().splitlines()] for s, p in paths.items()}
    return root, paths, recs


def test_jsonl_keys_and_values(built):
    root, paths, recs = built
    assert set(paths) == {"train", "valid"} and paths["train"] == root / "vqa" / "train.jsonl"
    all_recs = [r for rs in recs.values() for r in rs]
    assert len({r["id"] for r in all_recs}) == len(all_recs)
    for split, rs in recs.items():
        for r in rs:
            assert tuple(r) == VQA_KEYS and r["split"] == split
            assert r["answer"] in r["options"]
            assert r["question_type"] in {"presence", "abnormality", "location", "size", "count"}
            assert r["patient_id"] == r["volume_name"].rsplit("_", 2)[0]
            assert 0 <= r["slice_index"] < SHAPE[2] and r["roi"] and r["roi_source"] in {"mask", "anatomy"}
            for x0, y0, x1, y1 in r["roi"]:
                assert 0 <= x0 < x1 <= SHAPE[0] and 0 <= y0 < y1 <= SHAPE[1]
            assert len(r["reasoning"].split()) <= 30
            if r["question_type"] == "presence":
                assert r["options"] == ["yes", "no"]


def test_presence_balanced(built):
    _, _, recs = built
    answers = Counter(r["answer"] for rs in recs.values() for r in rs if r["question_type"] == "presence")
    assert answers["yes"] > 0 and answers["yes"] == answers["no"]


def test_mask_roi_is_bbox_of_the_channel_on_that_slice(built):
    root, _, recs = built
    grounding = load_grounding(root)
    df = read_split(root, "train").set_index("VolumeName")
    checked = 0
    for r in recs["train"]:
        if r["question_type"] != "size":
            continue
        name = r["volume_name"]
        row = df.loc[name].to_dict() | {"VolumeName": name}
        masks = load_lesion_mask(CTRATEPaths(root, "train").lesion_mask(name), row)
        boxes = [
            bbox_of(masks[f.index][:, :, r["slice_index"]].T)
            for f in grounding[name]
            if "nodule" in f.text and masks[f.index][:, :, r["slice_index"]].any()
        ]
        assert r["roi"][0] in boxes
        checked += 1
    assert checked


def test_labels_agree_with_masks(built):
    root, _, recs = built
    grounding = load_grounding(root)
    for split in ("train", "valid"):
        df = read_split(root, split)
        for row in df.to_dict("records"):
            labels = {label_of(f.text) for f in grounding.get(row["VolumeName"], [])}
            if row["Lung nodule"]:
                assert "Lung nodule" in labels
    yes = [r for rs in recs.values() for r in rs if r["question_type"] == "presence" and r["answer"] == "yes"]
    assert all(r["roi_source"] == "mask" for r in yes if r["abnormality"] == "Lung nodule")


def test_maskless_volumes_fall_back_to_anatomy(tmp_path):
    generate(tmp_path, n=6, seed=2)
    (tmp_path / "rexgroundingct" / "dataset.json").unlink()
    recs = [json.loads(line) for p in build_vqa(tmp_path, seed=0).values() for line in p.read_text().splitlines()]
    assert recs and all(r["roi_source"] == "anatomy" for r in recs)
    assert {r["question_type"] for r in recs} <= {"presence", "abnormality"}


def test_deterministic(built, tmp_path):
    root, paths, _ = built
    again = build_vqa(root, tmp_path / "vqa2", seed=0)
    assert all(again[s].read_bytes() == paths[s].read_bytes() for s in paths)


def test_label_of_keywords():
    assert label_of("Irregularly circumscribed nodular consolidation in the right lower lobe") == "Consolidation"
    assert label_of("A 4 mm nodule in the left upper lobe") == "Lung nodule"
    assert label_of("Minimal pericardial effusion") == "Pericardial effusion"
    assert label_of("Bilateral pleural effusion") == "Pleural effusion"
    assert label_of("Coronary artery wall calcification") == "Coronary artery wall calcification"
    assert label_of("Calcified plaques in the wall of the aorta") == "Arterial wall calcification"


@pytest.mark.parametrize(
    "labels", [("Lung nodule",), ("Arterial wall calcification", "Coronary artery wall calcification")]
)
def test_presence_roi_does_not_leak_the_answer(built, labels):
    """Yes and no presence questions of a local label show one box each, of similar size on average."""
    _, _, recs = built
    presence = [r for rs in recs.values() for r in rs if r["question_type"] == "presence"]
    assert presence and all(len(r["roi"]) == 1 for r in presence)
    for label in labels:
        areas = {
            answer: [
                (x1 - x0) * (y1 - y0)
                for r in presence
                if r["abnormality"] == label and r["answer"] == answer
                for x0, y0, x1, y1 in r["roi"]
            ]
            for answer in ("yes", "no")
        }
        assert areas["yes"] and areas["no"], label
        yes, no = (sum(a) / len(a) for a in (areas["yes"], areas["no"]))
        assert max(yes, no) / min(yes, no) < 1.5, (label, yes, no)
