"""Checks on a Hugging Face model directory before anything in it is loaded (model, processor)."""

from __future__ import annotations

import json
from pathlib import Path


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded as asked: weights that do not match its class, code to trust."""


def remote_code_check(model_path: str | Path, trust_remote_code: bool) -> None:
    """Refuse a directory whose model needs its own Python code (``auto_map`` in config.json) unless trusted.

    Raises ModelLoadError naming the directory and the option to set."""
    config = Path(model_path) / "config.json"
    needs_code = config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8"))
    if needs_code and not trust_remote_code:
        raise ModelLoadError(
            f"{model_path}: the model ships its own code (auto_map in config.json), which would run here; "
            "set model.init_args.trust_remote_code: true only if you trust its source"
        )
