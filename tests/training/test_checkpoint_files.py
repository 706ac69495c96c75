"""Checkpoints written before the renovation pickled hyperparameter dataclasses under their old module names;
they must still load as data (``weights_only``), so runs started before it resume."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from datamodules.splits import AnnotationSubset
from datamodules.synthetic import SyntheticData
from datamodules.vqa_dataset import ZoomSpec
from models.loading import LoRASpec
from training.checkpoint_files import load_checkpoint

OLD_NAMES = {
    SyntheticData: "datamodules.ct_vqa",
    ZoomSpec: "datamodules.ct_vqa",
    AnnotationSubset: "datamodules.ct_vqa",
    LoRASpec: "lightning_modules.model_loading",
}


VALUES = [SyntheticData(n=6), ZoomSpec(margin=0.25), AnnotationSubset("annotated"), LoRASpec()]


@pytest.mark.parametrize("value", VALUES)
def test_hyperparameters_pickled_under_old_module_names_still_load(value, tmp_path, monkeypatch):
    cls, old = type(value), OLD_NAMES[type(value)]
    # Pickle looks the class up by its module and name: stand the old module in so the file names it as before.
    module = sys.modules.get(old) or types.ModuleType(old)
    monkeypatch.setitem(sys.modules, old, module)
    monkeypatch.setattr(module, cls.__name__, cls, raising=False)
    monkeypatch.setattr(cls, "__module__", old)
    torch.save({"hyper_parameters": {"x": value}}, tmp_path / "old.ckpt")
    monkeypatch.undo()
    assert old.encode() in (tmp_path / "old.ckpt").read_bytes()  # the file really holds the old name
    assert load_checkpoint(tmp_path / "old.ckpt")["hyper_parameters"]["x"] == value
