"""Writing a trained module's model as a Hugging Face model directory (LoRA merged), atomically."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.load import _METADATA_FILENAME

from lightning_modules.checkpointing import load_checkpoint
from lightning_modules.model_loading import load_processor, save_model_dir, unwrap_base


def load_checkpoint_file(ckpt_path: str | Path) -> dict:
    """A Lightning checkpoint as one dict: a ``.ckpt`` file, or the folder a sharded (FSDP2) run writes.

    Read as data only (``checkpointing.load_checkpoint``): a checkpoint that would run code is refused.

    Raises:
        FileNotFoundError: no such file or folder.
        UnsafeCheckpointError: the checkpoint holds code (e.g. a pickled function).
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_dir():
        return load_checkpoint(ckpt_path)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    load_checkpoint(ckpt_path / _METADATA_FILENAME)  # the pickled part, checked before anything is converted
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(ckpt_path, Path(tmp) / "full.ckpt")
        return load_checkpoint(Path(tmp) / "full.ckpt")


def export_hf_model(module: L.LightningModule, ckpt_path: str | Path | None, out_dir: str | Path) -> Path:
    """Load ``ckpt_path`` (if given) into ``module`` and save its model + processor to ``out_dir``.

    The result loads with ``from_pretrained(out_dir)`` like any checkpoint, so GRPO, evaluation and
    inference start from it; it is written atomically (``save_model_dir``).
    """
    module.configure_model()
    if ckpt_path is not None:
        module.load_state_dict(load_checkpoint_file(ckpt_path)["state_dict"])
    return save_model_dir(unwrap_base(module.model), load_processor(module.hparams.model_path), out_dir)
