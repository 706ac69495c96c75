"""Writing a trained module's model as a Hugging Face model directory (LoRA merged), atomically."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch

from lightning_modules.model_loading import load_processor, save_model_dir, unwrap_base


def load_checkpoint_file(ckpt_path: str | Path) -> dict:
    """A Lightning checkpoint as one dict: a ``.ckpt`` file, or the folder a sharded (FSDP2) run writes."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_dir():
        return torch.load(ckpt_path, map_location="cpu", weights_only=False)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(ckpt_path, Path(tmp) / "full.ckpt")
        return torch.load(Path(tmp) / "full.ckpt", map_location="cpu", weights_only=False)


def export_hf_model(module: L.LightningModule, ckpt_path: str | Path | None, out_dir: str | Path) -> Path:
    """Load ``ckpt_path`` (if given) into ``module`` and save its model + processor to ``out_dir``.

    The result loads with ``from_pretrained(out_dir)`` like any checkpoint, so GRPO, evaluation and
    inference start from it; it is written atomically (``save_model_dir``).
    """
    module.configure_model()
    if ckpt_path is not None:
        module.load_state_dict(load_checkpoint_file(ckpt_path)["state_dict"])
    return save_model_dir(unwrap_base(module.model), load_processor(module.hparams.model_path), out_dir)
