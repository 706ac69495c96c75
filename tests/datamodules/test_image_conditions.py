"""The visual-reliance audit's image conditions (datamodules/image_conditions.py, record_views.py, transforms.py):
pixel conditions on a known array, the shuffle, the wrong region's geometry, and the conditions as a dataset shows
them on the synthetic CT-RATE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.ct_vqa import CTVQADataModule
from datamodules.ctrate import CTRATEPaths, load_lesion_mask
from datamodules.image_conditions import ImageCondition, condition_view, shuffle_partners, wrong_region_boxes
from datamodules.vqa_dataset import ZoomSpec
from datamodules.zoom import ZoomEmbed

YELLOW = torch.tensor([1.0, 1.0, 0.0])
BOX = [[10, 40, 22, 52]]  # lower left: the inset goes to the upper right corner


def views(layout: str = "inset") -> tuple[torch.Tensor, torch.Tensor, dict]:
    y, x = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    global_view = torch.stack([x / 64, y / 64, (x + y) / 128]).float() * 0.8
    zoomed, meta = ZoomEmbed(layout=layout).embed(global_view, BOX)
    return global_view, zoomed, meta


def test_blank_is_uniform_and_the_size_of_the_original():
    global_view, zoomed, meta = views("side_by_side")
    out = condition_view("blank", global_view, zoomed, meta, BOX, (YELLOW, 1), blank_value=0.25)
    assert out.shape == zoomed.shape == (3, 64, 128) and torch.all(out == 0.25)


def test_global_only_is_the_plain_slice():
    global_view, zoomed, meta = views()
    assert torch.equal(condition_view("global_only", global_view, zoomed, meta, BOX, (YELLOW, 1)), global_view)
    global_view, zoomed, meta = views("side_by_side")
    out = condition_view("global_only", global_view, zoomed, meta, BOX, (YELLOW, 1))
    assert torch.equal(out[:, :, :64], global_view) and torch.all(out[:, :, 64:] == 0)


def test_outline_only_draws_the_box_and_no_inset():
    global_view, zoomed, meta = views()
    out = condition_view("outline_only", global_view, zoomed, meta, BOX, (YELLOW, 1))
    x0, y0, x1, y1 = BOX[0]
    assert torch.all(out[:, y0, x0:x1] == YELLOW[:, None]) and torch.all(out[:, y1 - 1, x0:x1] == YELLOW[:, None])
    border = torch.zeros(64, 64, dtype=torch.bool)
    border[y0:y1, x0:x1] = True
    border[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = False
    assert torch.equal(out[:, ~border], global_view[:, ~border])  # no inset, no frame: the slice elsewhere
    ix0, iy0, ix1, iy1 = meta["inset"]
    assert not torch.equal(out[:, iy0:iy1, ix0:ix1], zoomed[:, iy0:iy1, ix0:ix1])


def test_zoom_only_keeps_the_inset_and_its_frame_alone():
    global_view, zoomed, meta = views()
    out = condition_view("zoom_only", global_view, zoomed, meta, BOX, (YELLOW, 1))
    ix0, iy0, ix1, iy1 = meta["inset"]
    panel = torch.zeros(64, 64, dtype=torch.bool)
    panel[iy0 - 1 : iy1 + 1, ix0 - 1 : ix1 + 1] = True
    assert torch.equal(out[:, panel], zoomed[:, panel]) and torch.all(out[:, ~panel] == 0)
    with pytest.raises(ValueError, match="needs the zoom"):
        condition_view("zoom_only", global_view, None, None, BOX, (YELLOW, 1))


def test_shuffled_keeps_the_question_type_and_never_the_own_image():
    records = [{"question_type": t, "volume_name": f"v{i % 3}"} for i, t in enumerate("ppppppaaaal")]
    partner = shuffle_partners(records, seed=0)
    assert partner == shuffle_partners(records, seed=0) != shuffle_partners(records, seed=1)
    assert sorted(partner) == list(range(len(records)))  # a permutation
    for i, j in enumerate(partner):
        assert records[j]["question_type"] == records[i]["question_type"]
        if records[i]["question_type"] != "l":  # the single "l" question keeps its own image
            assert j != i and records[j]["volume_name"] != records[i]["volume_name"]


def test_wrong_region_is_lesion_free_the_same_size_and_elsewhere():
    lesion = np.zeros((64, 64), bool)
    lesion[20:30, 20:34] = True
    body = np.ones((64, 64), bool)
    boxes = [[20, 20, 34, 30]]
    for seed in range(20):
        (moved,) = wrong_region_boxes(boxes, lesion, body, np.random.default_rng(seed))
        x0, y0, x1, y1 = moved
        assert (x1 - x0, y1 - y0) == (14, 10) and 0 <= x0 and x1 <= 64 and 0 <= y0 and y1 <= 64
        assert not lesion[y0:y1, x0:x1].any()
        assert x1 <= 20 or x0 >= 34 or y1 <= 20 or y0 >= 30
    lesion[:, 40:] = True  # no lesion-free place of 14×60 left
    assert wrong_region_boxes([[0, 2, 14, 62]], lesion, body, np.random.default_rng(0)) is None


@pytest.mark.parametrize("name", ["blank", "wrong_region", "shuffled", "box_source"])
def test_conditions_in_the_dataset(synthetic_root, tiny_model_dir, name):
    """The conditions as CTVQADataset renders them: blank uniform, wrong boxes lesion-free and of the same size
    under the real lesion masks, shuffled images of the same question type, anatomy boxes for presence questions."""
    source = {"class_path": "datamodules.roi_sources.AnatomyROI"} if name == "box_source" else None
    condition = {"name": name, "roi_source": source}
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), num_workers=0, zoom=ZoomSpec(),
        max_samples=12, image_condition=condition,
    )  # fmt: skip
    dm.setup("test")
    ds = dm.datasets["test"]
    assert isinstance(dm.hparams.image_condition, ImageCondition)
    for record in ds.records:
        image = ds.image(record)
        assert image.shape == (3, 112, 112)
        if name == "blank":
            assert torch.all(image == image.flatten()[0])
            continue
        shown, status = ds.renderer.views.view(record)
        if name == "wrong_region":
            assert status == "moved" and shown["slice_index"] == record["slice_index"]
            path = CTRATEPaths(synthetic_root).lesion_mask(record["volume_name"])
            lesion = load_lesion_mask(path, ds.metadata[record["volume_name"]]).any(0)[:, :, record["slice_index"]].T
            for (x0, y0, x1, y1), (a0, b0, a1, b1) in zip(shown["roi"], record["roi"], strict=True):
                assert (x1 - x0, y1 - y0) == (a1 - a0, b1 - b0) and not lesion[y0:y1, x0:x1].any()
        elif name == "shuffled":
            other = next(r for r in ds.records if r["id"] == shown["shown_id"])
            assert other["question_type"] == record["question_type"]
        elif record["question_type"] in ("presence", "abnormality"):
            assert status == "proposed"
        else:
            assert status == "lesion box kept" and shown["roi"] == record["roi"]
