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


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """``family_model_dir(name)``: the tiny model of a VLM family (models/tiny), built once per session."""
    from models.tiny.builders import build_tiny

    built = {"qwen2_5_vl": tiny_model_dir}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, tmp_path_factory.mktemp("models") / family)
        return built[family]

    return get
