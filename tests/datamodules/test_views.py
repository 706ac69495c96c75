"""Candidate views (datamodules/views.py, slabs.py): slab projections, K views per question from a source, the
oracle hidden among them, records and prompts with K images, and K = 1 without slabs exactly as before."""

import hashlib
import json

import numpy as np
import pytest
import torch

from datamodules.collate import IMAGE_COUNTS
from datamodules.ct_vqa import CTVQADataModule, without_digests
from datamodules.ctrate import BadSampleError, bbox_of
from datamodules.roi_sources import AnatomyROI, MaskROI, slice_extents
from datamodules.slabs import SlabProjection, SlabProjectiond, axial_slab, slab_range
from datamodules.views import ViewSpec, spaced, spread, view_labels
from datamodules.vqa_builder import build_vqa, vqa_state
from datamodules.vqa_records import read_vqa_jsonl


def test_slab_projection_max_and_mean_of_a_known_slab():
    slab = np.stack([np.full((2, 3), v, np.float32) for v in (-1000.0, 40.0, 100.0)], axis=-1)  # (2, 3, Z=3)
    assert np.array_equal(SlabProjection("max")(slab), np.full((2, 3), 100.0, np.float32))
    assert np.allclose(SlabProjection("mean")(torch.from_numpy(slab)), np.full((2, 3), -860 / 3))
    assert SlabProjectiond(keys="image", mode="max")({"image": slab, "roi": 1})["image"].shape == (2, 3)
    with pytest.raises(ValueError, match="mode"):
        SlabProjection("min")
    with pytest.raises(ValueError, match="no slice"):
        SlabProjection()(slab[..., :0])


def test_slab_range_and_axial_slab():
    assert slab_range(5, 20, 10.0, 5.0) == (5, 7)  # 2 slices of 5 mm
    assert slab_range(5, 20, 10.0, 2.0) == (3, 8)  # 5 slices of 2 mm, centred
    assert slab_range(0, 20, 10.0, 2.5) == (0, 4)  # moved inside the volume at its ends
    assert slab_range(19, 20, 10.0, 2.5) == (16, 20)
    assert slab_range(5, 20, 0.0, 5.0) == (5, 6)  # one slice
    volume = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)  # (1, X, Y, Z)
    assert np.array_equal(axial_slab(volume, 2, 0.0, 1.0, "max"), volume[0, :, :, 2].numpy().T)
    assert np.array_equal(axial_slab(volume, 1, 2.0, 1.0, "max"), volume[0, :, :, 2].numpy().T)  # slices 0..2
    with pytest.raises(BadSampleError, match="outside"):
        axial_slab(volume, 4, 0.0, 1.0, "max")


def test_spacing_spread_and_spec_checks():
    assert spaced([(10, "a"), (11, "b"), (20, "c"), (14, "d")], 3, 4) == [(10, "a"), (20, "c"), (14, "d")]
    assert spread(0, 40, 4) == [5, 15, 25, 35]
    assert ViewSpec(k=4, min_distance_mm=20).min_slices(5.0) == 4 and not ViewSpec().active
    assert ViewSpec(k=1, slab_mm=10).active and ViewSpec(k=2).active
    assert ViewSpec(projection="auto").projection_for("presence", "Lung nodule") == "max"
    assert ViewSpec(projection="auto").projection_for("presence", "Pleural effusion") == "mean"
    assert ViewSpec(projection="auto").projection_for("abnormality", "Pleural effusion") == "max"  # label = answer
    for bad in ({"k": 0}, {"slab_mm": -1.0}, {"projection": "min"}):
        with pytest.raises(ValueError):
            ViewSpec(**bad)


def _records(paths):
    return {s: [json.loads(line) for line in p.read_text().splitlines()] for s, p in paths.items()}


# What the code before candidate views (commit aac2ab0) wrote for the shared fixture (14 volumes, seed 0), and the
# SHA-256 of every model input of its first training batch (3 samples, seed 0; processor outputs only).
BEFORE_VIEWS = {
    "train": "c63964b2d063af559fccae94c84d69f3a46abe36b8e56df351f93b04655c07c6",
    "valid": "276abb70c9d8bb000b4e5c3cde56fbf148f3c0a827499a7b7beaf47a83cf5faa",
    "batch": "c3a951d67a843e636134e45f211a35c9215a3949f1b9c49b6bc622fc71cc6baa",
}


def test_k1_without_slabs_reproduces_the_files_and_batches_from_before_views(synthetic_root, tiny_model_dir, tmp_path):
    paths = build_vqa(synthetic_root, tmp_path / "k1", seed=0, views=ViewSpec(k=1))
    for split, path in paths.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == BEFORE_VIEWS[split]
    info = json.loads((tmp_path / "k1" / "build.json").read_text())
    assert "views" not in info and info["lesion_coverage"]["valid"]["some_view_shows_lesion"] == 1.0
    settings = {"synthetic": None, "views": ViewSpec(k=1), "batch_size": 3, "num_workers": 0, "seed": 0}
    dm = CTVQADataModule(str(synthetic_root), str(tiny_model_dir), vqa_dir=str(tmp_path / "k1"), **settings)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    digest = hashlib.sha256()
    for key in sorted(k for k in batch if k not in ("meta", IMAGE_COUNTS)):
        digest.update(key.encode())
        digest.update(batch[key].contiguous().numpy().tobytes())
    assert digest.hexdigest() == BEFORE_VIEWS["batch"] and batch[IMAGE_COUNTS].tolist() == [1, 1, 1]


@pytest.fixture(scope="module")
def k3(synthetic_root, tmp_path_factory):
    spec = ViewSpec(k=3, min_distance_mm=20, slab_mm=10)
    out = tmp_path_factory.mktemp("vqa-k3")
    return spec, out, _records(build_vqa(synthetic_root, out, seed=0, roi_source=AnatomyROI(), views=spec))


def test_k_views_per_question_from_the_source(k3):
    spec, out, recs = k3
    for r in (r for rs in recs.values() for r in rs):
        if r["question_type"] not in ("presence", "abnormality"):
            assert "views" not in r  # location, size and count keep their lesion's slice
            continue
        views = r["views"]
        slices = [v["slice_index"] for v in views]
        assert 1 <= len(views) <= 3 and slices == sorted(slices) and r["slice_index"] in slices
        assert all(b - a >= 4 for a, b in zip(slices, slices[1:], strict=False))  # 20 mm at 5 mm slices
        assert all(v["slab_mm"] == 10.0 and v["z_mm"] == v["slice_index"] * 5.0 for v in views)
        assert r["reasoning"].startswith("Evidence: View ")
        j = int(r["reasoning"].split()[2].rstrip("."))
        if any(v["shows_lesion"] for v in views):
            assert views[j - 1]["shows_lesion"]  # the evidence named is a view that shows the lesion
    presence = [r for r in recs["train"] if r["question_type"] == "presence"]
    # Negatives get their views as positives do: the number of views says nothing of the answer.
    for answer in ("yes", "no"):
        assert np.mean([len(r["views"]) for r in presence if r["answer"] == answer]) > 2
    info = json.loads((out / "build.json").read_text())
    assert info["views"]["k"] == 3 and 0 < info["lesion_coverage"]["train"]["some_view_shows_lesion"] <= 1
    assert vqa_state(out, AnatomyROI(), spec) == "built"
    with pytest.raises(BadSampleError, match="views"):
        vqa_state(out, AnatomyROI(), ViewSpec(k=2))


def test_oracle_hidden_among_other_views(synthetic_root, tmp_path):
    source = MaskROI(extra_views=AnatomyROI())
    recs = _records(build_vqa(synthetic_root, tmp_path, seed=0, roi_source=source, views=ViewSpec(k=3)))
    positives = [r for r in recs["train"] if r["question_type"] == "presence" and r["answer"] == "yes"]
    assert positives and all(r["roi_source"] == "mask" for r in positives if len(r["views"]) > 1)
    # The lesion's own slice is one of the views, not always the first.
    assert all(r["slice_index"] in [v["slice_index"] for v in r["views"]] for r in positives)
    assert {[v["slice_index"] for v in r["views"]].index(r["slice_index"]) for r in positives} != {0}
    assert source.describe()["init_args"]["extra_views"]["class_path"].endswith("AnatomyROI")


def test_reader_names_a_bad_view(synthetic_root, tmp_path, k3):
    _, out, recs = k3
    record = next(r for r in recs["train"] if "views" in r)
    for bad, word in [
        ({**record["views"][0], "roi": [[5, 5, 2, 9]]}, "roi"),
        ({**record["views"][0], "projection": "min"}, "projection"),
        ({k: v for k, v in record["views"][0].items() if k != "z_mm"}, "keys"),
    ]:
        path = tmp_path / "train.jsonl"
        path.write_text(json.dumps({**record, "views": [bad]}) + "\n")
        with pytest.raises(BadSampleError, match=rf"line 1: field 'views\[0\]' .*{word}"):
            read_vqa_jsonl(path)


def test_dataset_shows_k_labelled_images_and_refuses_over_long_prompts(synthetic_root, tiny_model_dir, k3):
    spec, out, recs = k3
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), synthetic=None, vqa_dir=str(out),
        roi_source=AnatomyROI(), views=spec, image_size=56, num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    ds = dm.datasets["train"]
    i = next(i for i, r in enumerate(ds.records) if len(r.get("views") or []) == 3)
    record, sample = ds.records[i], ds[i]
    assert sample["num_images"] == 3 and sample["image_grid_thw"].shape[0] == 3
    text = dm.processor.tokenizer.decode(sample["prompt_ids"])
    labels = view_labels(record)
    assert [text.index(label) for label in labels] == sorted(text.index(label) for label in labels)
    assert text.count("<|vision_start|>") == 3 and text.index(labels[-1]) < text.index(record["question"])
    assert sample["meta"]["image_tokens"] == 3 * int(sample["image_grid_thw"][0].prod()) // 4  # 2×2 merge
    assert ds.image(record).shape[-1] == 3 * ds.images(record)[0].shape[-1]  # the case image: side by side
    ds.max_length = len(sample["prompt_ids"])  # the prompt alone no longer fits: refused, never truncated
    with pytest.raises(BadSampleError, match="prompt is .* tokens, over max_length"):
        ds[i]


def test_slice_extents_are_the_boxes_of_every_slice():
    mask = np.random.default_rng(0).random((20, 16, 6)) > 0.97  # (X, Y, Z), a few voxels per slice
    mask[:, :, 3] = False
    areas, boxes = slice_extents(mask)
    for z in range(6):
        assert areas[z] == mask[:, :, z].sum()
        if areas[z]:
            assert boxes[z].tolist() == bbox_of(mask[:, :, z].T)


def test_build_command_of_a_nested_source_leaves_out_its_digests():
    cam = {"class_path": "CAMROI", "init_args": {"checkpoint": "c"}}
    spec = {"class_path": "MaskROI", "init_args": {"extra_views": {**cam, "checkpoint_sha256": "ab"}}}
    assert without_digests({**spec, "checkpoint_sha256": "cd"}) == {**spec, "init_args": {"extra_views": cam}}
