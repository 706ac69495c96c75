"""Writing a trained module's model as a Hugging Face model directory (LoRA merged), atomically."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from datamodules.processor import load_processor
from models.loading import save_model_dir, unwrap_base
from training.checkpoint_files import load_checkpoint_file


def export_hf_model(module: L.LightningModule, ckpt_path: str | Path | None, out_dir: str | Path) -> Path:
    """Load ``ckpt_path`` (if given) into ``module`` and save its model + processor to ``out_dir``.

    The result loads with ``from_pretrained(out_dir)`` like any checkpoint, so GRPO, evaluation and
    inference start from it; it is written atomically (``save_model_dir``).
    """
    module.configure_model()
    if ckpt_path is not None:
        module.load_state_dict(load_checkpoint_file(ckpt_path)["state_dict"])
    return save_model_dir(unwrap_base(module.model), load_processor(module.hparams.model_path), out_dir)
