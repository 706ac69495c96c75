"""The CT-VQA datamodule (datamodules/ct_vqa.py): batches, label masking, splits and bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.collate import IGNORE_INDEX
from datamodules.ct_vqa import CTVQADataModule
from datamodules.ctrate import BadSampleError, CTRATEPaths
from datamodules.synthetic import SyntheticData, generate_if_missing
from datamodules.vqa_dataset import ZoomSpec


def make(root: Path, model_dir: Path, **kwargs) -> CTVQADataModule:
    dm = CTVQADataModule(data_dir=str(root), processor_path=str(model_dir), **{"num_workers": 0, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def root_copy(tmp_path, synthetic_root) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "ctrate"))


def test_batch_shapes_and_only_the_answer_is_supervised(synthetic_root, tiny_model_dir):
    dm = make(synthetic_root, tiny_model_dir, batch_size=3, zoom=ZoomSpec())
    batch = next(iter(dm.train_dataloader()))
    b, t = batch["input_ids"].shape
    assert b == 3 and batch["labels"].shape == (b, t) and batch["mm_token_type_ids"].shape == (b, t)
    assert batch["prompt_input_ids"].shape[0] == b and batch["image_grid_thw"].shape == (b, 3)
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    tok = dm.processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    for row in range(b):
        supervised = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        text = tok.decode(supervised)
        answer = batch["meta"][row]["answer"]
        assert text.startswith("<think>") and text.endswith(f"<answer>{answer}</answer><|im_end|>")
        assert image_id not in supervised.tolist()
        # prompt ids end exactly where the supervised answer begins
        n_prompt = int(batch["prompt_attention_mask"][row].sum())
        full = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        assert torch.equal(full[:n_prompt], batch["prompt_input_ids"][row][-n_prompt:])


def test_zoom_off_and_side_by_side_change_the_image(synthetic_root, tiny_model_dir):
    record = make(synthetic_root, tiny_model_dir, max_samples=1).datasets["train"].records[0]
    images = {}
    for name, zoom in {"none": None, "inset": ZoomSpec(), "side": ZoomSpec(layout="side_by_side")}.items():
        ds = make(synthetic_root, tiny_model_dir, zoom=zoom, max_samples=1).datasets["train"]
        images[name] = ds.image(record)
        assert ("inset" in ds.system_prompt) == (name == "inset")
    assert images["none"].shape == images["inset"].shape == (3, 112, 112)
    assert images["side"].shape == (3, 56, 112)  # longest side = image_size
    assert not torch.equal(images["none"], images["inset"])


def test_samples_do_not_depend_on_num_workers(synthetic_root, tiny_model_dir):
    """Samples are made on one intra-op thread in the main process too, as in a DataLoader worker: bilinear resizing
    rounds differently on two threads, so without that a batch depended on num_workers and the machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batches = {}
        for workers in (0, 1):
            dm = make(synthetic_root, tiny_model_dir, zoom=ZoomSpec(), max_samples=8, num_workers=workers)
            batches[workers] = list(dm.test_dataloader())
        assert torch.get_num_threads() == 2  # the main process gets its pool back after each sample
    finally:
        torch.set_num_threads(threads)
    for ours, theirs in zip(batches[0], batches[1], strict=True):
        for key, value in ours.items():
            assert torch.equal(value, theirs[key]) if key != "meta" else value == theirs[key], key


def test_patients_never_cross_splits(synthetic_root, tiny_model_dir):
    dm = make(synthetic_root, tiny_model_dir, val_fraction=0.3)
    patients = {name: {r["patient_id"] for r in ds.records} for name, ds in dm.datasets.items()}
    assert patients["train"] and patients["val"] and patients["test"]
    assert not patients["train"] & patients["val"] and not (patients["train"] | patients["val"]) & patients["test"]


def _rewrite_first_record(root: Path, **changes) -> dict:
    path = root / "vqa" / "train.jsonl"
    lines = path.read_text().splitlines()
    record = {**json.loads(lines[0]), **changes}
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    return record


def _first_index(dm: CTVQADataModule, record_id: str) -> tuple[str, int]:
    for split, ds in dm.datasets.items():
        for i, r in enumerate(ds.records):
            if r["id"] == record_id:
                return split, i
    raise AssertionError(record_id)


def test_corrupt_nifti_names_the_file_or_is_skipped(root_copy, tiny_model_dir):
    record = _rewrite_first_record(root_copy)
    volume = CTRATEPaths(root_copy, "train").volume(record["volume_name"])
    volume.write_bytes(b"\x1f\x8b not really gzip")
    dm = make(root_copy, tiny_model_dir, val_fraction=0.0)
    split, i = _first_index(dm, record["id"])
    with pytest.raises(BadSampleError, match=record["volume_name"]):
        dm.datasets[split][i]
    skipping = make(root_copy, tiny_model_dir, val_fraction=0.0, skip_bad_samples=True)
    assert skipping.datasets[split][i] is None
    assert len(skipping.skipped_samples()[split]) == 1


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [({"roi": [[0, 0, 500, 20]]}, "field 'roi'"), ({"slice_index": 999}, "field 'slice_index'")],
)
def test_roi_or_slice_outside_the_volume_names_line_and_field(root_copy, tiny_model_dir, changes, fragment):
    record = _rewrite_first_record(root_copy, **changes)
    dm = make(root_copy, tiny_model_dir, val_fraction=0.0)
    split, i = _first_index(dm, record["id"])
    with pytest.raises(BadSampleError) as err:
        dm.datasets[split][i]
    assert "train.jsonl line 1" in str(err.value) and fragment in str(err.value)


def test_missing_csv_column_is_a_clear_error(root_copy, tiny_model_dir):
    meta = root_copy / "dataset" / "metadata" / "train_metadata.csv"
    pd.read_csv(meta).drop(columns=["RescaleSlope"]).to_csv(meta, index=False)
    with pytest.raises(BadSampleError, match="train_metadata.csv: missing column 'RescaleSlope'"):
        make(root_copy, tiny_model_dir)


def test_missing_data_dir_is_generated_when_synthetic_is_asked_for(tmp_path, tiny_model_dir):
    dm = make(tmp_path / "fresh", tiny_model_dir, synthetic=SyntheticData(n=6, seed=1))
    assert (tmp_path / "fresh" / "vqa" / "train.jsonl").is_file()
    assert len(dm.datasets["train"]) > 0


def test_nan_voxels_are_refused_naming_the_file_or_skipped_and_counted(root_copy, tiny_model_dir):
    """A float32 volume with a 40×40 block of NaN on every slice (outside the field of view): rendered, the NaN
    spread through windowing, zoom and resize and turned black; now the loader refuses the volume."""
    record = _rewrite_first_record(root_copy)
    volume = CTRATEPaths(root_copy, "train").volume(record["volume_name"])
    img = nib.load(volume)
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[:40, :40, :] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), volume)
    dm = make(root_copy, tiny_model_dir, val_fraction=0.0)
    split, i = _first_index(dm, record["id"])
    with pytest.raises(BadSampleError) as err:
        dm.datasets[split][i]
    assert str(err.value).startswith(f"dataset/train/{record['patient_id']}/")
    assert f"{record['volume_name']}: holds NaN or infinite values (51200 of 524288 voxels" in str(err.value)
    skipping = make(root_copy, tiny_model_dir, val_fraction=0.0, skip_bad_samples=True)
    assert skipping.datasets[split][i] is None
    assert skipping.skipped_samples()[split] == [str(err.value)]


def test_a_target_longer_than_max_length_is_refused_not_cut(synthetic_root, tiny_model_dir):
    """SFT used to train on the target's first tokens (no </think>, <answer> or end of turn)."""
    dataset = make(synthetic_root, tiny_model_dir, max_samples=1, val_fraction=0.0).datasets["train"]
    sample = dataset[0]
    total = len(sample["prompt_ids"]) + len(sample["target_ids"])
    assert dataset.processor.tokenizer.decode(sample["target_ids"]).endswith("</answer><|im_end|>")
    dataset.max_length = total  # exactly enough: kept whole
    assert len(dataset[0]["target_ids"]) == len(sample["target_ids"])
    dataset.max_length = total - 1
    where = dataset.records[0]["_where"]
    with pytest.raises(
        BadSampleError, match=rf"^{re.escape(where)}: prompt \+ target is {total} tokens, over max_length={total - 1}$"
    ):
        dataset[0]
    dataset.skip_bad_samples = True
    assert dataset[0] is None and list(dataset.skipped.values()) == [
        f"{where}: prompt + target is {total} tokens, over max_length={total - 1}"
    ]


def test_synthetic_scanner_b_is_generated_and_a_folder_of_the_other_scanner_refused(tmp_path, synthetic_root):
    generate_if_missing(tmp_path / "b", SyntheticData(n=2, seed=0, scanner="B"))
    meta = pd.read_csv(CTRATEPaths(tmp_path / "b", "train").metadata_csv)
    assert set(meta["Manufacturer"]) == {"SYNTHETIC-B"} and set(meta["ZSpacing"]) == {2.5}
    generate_if_missing(tmp_path / "b", SyntheticData(n=2, seed=0, scanner="B"))  # its own scanner: kept as is
    generate_if_missing(synthetic_root, SyntheticData(scanner="A"))
    with pytest.raises(
        BadSampleError, match=r"train_metadata\.csv:2: field 'Manufacturer': 'SYNTHETIC' is scanner A's"
    ):
        generate_if_missing(synthetic_root, SyntheticData(scanner="B"))


def test_chat_template_kwargs_reach_the_models_template(synthetic_root, tiny_model_dir):
    """``chat_template_kwargs`` are the template's own switches (Qwen's ``add_vision_id`` here; ``enable_thinking``
    for Qwen3-style templates): the rendered prompt follows them, the default prompt does not change."""
    plain = make(synthetic_root, tiny_model_dir, max_samples=2).datasets["train"][0]
    numbered = make(synthetic_root, tiny_model_dir, max_samples=2, chat_template_kwargs={"add_vision_id": True})
    sample = numbered.datasets["train"][0]
    text = numbered.processor.tokenizer.decode(sample["prompt_ids"])
    assert "Picture 1: <|vision_start|>" in text
    assert "Picture 1" not in numbered.processor.tokenizer.decode(plain["prompt_ids"])


def test_a_template_that_opens_think_itself_is_refused_under_the_think_format(synthetic_root, tiny_model_dir, tmp_path):
    """A Qwen3-style thinking template writes ``<think>`` into the generation prompt; our ``think`` targets open
    their own block. Refused in one line naming the directory, unless its switch leaves it out (or no_think)."""
    from common.model_dirs import ModelLoadError

    thinking = Path(shutil.copytree(tiny_model_dir, tmp_path / "thinking"))
    template = (thinking / "chat_template.jinja").read_text()
    opened = "<|im_start|>assistant\n{% if enable_thinking is not defined or enable_thinking %}<think>\n{% endif %}"
    assert template.count("<|im_start|>assistant\n") == 1
    (thinking / "chat_template.jinja").write_text(template.replace("<|im_start|>assistant\n", opened))
    with pytest.raises(ModelLoadError, match=rf"{thinking}: its chat template opens <think>"):
        make(synthetic_root, thinking, max_samples=2)
    switched = make(synthetic_root, thinking, max_samples=2, chat_template_kwargs={"enable_thinking": False})
    prompt = switched.processor.tokenizer.decode(switched.datasets["train"][0]["prompt_ids"])
    assert prompt.endswith("<|im_start|>assistant\n")
    make(synthetic_root, thinking, max_samples=2, prompt_format="no_think")
