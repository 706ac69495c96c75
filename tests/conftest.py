"""Shared fixtures: one small synthetic CT-RATE (with VQA files) and one embedded tiny model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic_ctrate import generate
    from datamodules.vqa_builder import build_vqa

    root = tmp_path_factory.mktemp("ctrate")
    generate(root, n=14, seed=0)
    build_vqa(root, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.embedded import build_embedded_model

    return build_embedded_model(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl")
