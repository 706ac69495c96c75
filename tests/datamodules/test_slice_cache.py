"""Axial slices cached on disk (datamodules/slice_cache.py): the same images, no decoding on a hit, stale entries
never read, bad input still named."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.ct_vqa import CTVQADataModule
from datamodules.ctrate import BadSampleError


def make(root: Path, model_dir: Path, **kwargs) -> CTVQADataModule:
    dm = CTVQADataModule(
        data_dir=str(root), processor_path=str(model_dir), synthetic=None, num_workers=0, val_fraction=0.0, **kwargs
    )
    dm.setup("fit")
    return dm


@pytest.fixture
def root_copy(tmp_path, synthetic_root) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "ctrate"))


def test_cached_slices_give_the_same_images_and_skip_decoding(root_copy, tiny_model_dir, tmp_path):
    cache = tmp_path / "slices"
    plain = make(root_copy, tiny_model_dir).datasets["train"]
    first = make(root_copy, tiny_model_dir, slice_cache_dir=str(cache)).datasets["train"]
    records = plain.records[:6]
    for record in records:
        assert torch.equal(first.image(record), plain.image(record))
    written = sorted(cache.rglob("*.npy"))
    assert len(written) == len({(r["volume_name"], r["slice_index"]) for r in records})
    assert sorted(f for f in cache.rglob("*") if f.is_file()) == written  # no atomic write's temporary file left
    assert all(np.load(f).dtype == np.int16 for f in written)  # synthetic HU are whole numbers: stored exactly

    second = make(root_copy, tiny_model_dir, slice_cache_dir=str(cache)).datasets["train"]  # a later run
    for record in records:
        assert torch.equal(second.image(record), plain.image(record))
    assert not second.renderer.volumes._volumes  # every slice came from disk: no volume was decoded


def test_a_replaced_volume_or_changed_metadata_is_decoded_again(root_copy, tiny_model_dir, tmp_path):
    cache = tmp_path / "slices"
    record = make(root_copy, tiny_model_dir).datasets["train"].records[0]
    make(root_copy, tiny_model_dir, slice_cache_dir=str(cache)).datasets["train"].image(record)

    dataset = make(root_copy, tiny_model_dir, slice_cache_dir=str(cache)).datasets["train"]
    volume = dataset.renderer.volumes.path(record["volume_name"])
    stat = volume.stat()
    os.utime(volume, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    dataset.image(record)
    assert record["volume_name"] in dataset.renderer.volumes._volumes

    dataset = make(root_copy, tiny_model_dir, slice_cache_dir=str(cache)).datasets["train"]
    before = dataset.renderer.hu_slice(record)
    dataset.metadata[record["volume_name"]] = {**dataset.metadata[record["volume_name"]], "RescaleIntercept": -1000}
    dataset.renderer.volumes._volumes.clear()
    shifted = dataset.renderer.hu_slice(record)
    assert not np.array_equal(shifted, before)
    assert record["volume_name"] in dataset.renderer.volumes._volumes  # another metadata row: decoded, not read stale
    assert len(list((cache / record["volume_name"]).iterdir())) == 3


def test_a_slice_outside_the_volume_is_still_named(root_copy, tiny_model_dir, tmp_path):
    dataset = make(root_copy, tiny_model_dir, slice_cache_dir=str(tmp_path / "slices")).datasets["train"]
    record = {**dataset.records[0], "slice_index": 999}
    with pytest.raises(BadSampleError, match="field 'slice_index' 999"):
        dataset.image(record)
    assert not list((tmp_path / "slices").rglob("*.npy"))


def test_a_bad_volume_is_never_cached_and_a_bad_cached_slice_is_cut_again(root_copy, tiny_model_dir, tmp_path):
    cache = tmp_path / "slices"
    dataset = make(root_copy, tiny_model_dir, slice_cache_dir=str(cache)).datasets["train"]
    record = dataset.records[0]
    good = dataset.renderer.hu_slice(record)
    (stored,) = cache.rglob("*.npy")
    stored.write_bytes(stored.read_bytes()[:50])  # a truncated entry
    dataset.renderer.volumes._volumes.clear()
    np.testing.assert_array_equal(
        dataset.renderer.hu_slice(record), good
    )  # cut again from the volume, and stored again
    assert np.load(stored).shape == good.shape
    np.save(stored, np.full(good.shape, np.nan, np.float32))  # an entry of a volume refused today
    np.testing.assert_array_equal(dataset.renderer.hu_slice(record), good)

    volume = dataset.renderer.volumes.path(record["volume_name"])
    img = nib.load(volume)
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[:40, :40, :] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), volume)
    dataset = make(root_copy, tiny_model_dir, slice_cache_dir=str(cache)).datasets["train"]
    with pytest.raises(BadSampleError, match=f"{record['volume_name']}: holds NaN or infinite values"):
        dataset.renderer.hu_slice(record)
    assert list(cache.rglob("*.npy")) == [stored]  # the replaced volume's key has no slice
