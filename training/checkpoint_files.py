"""Reading checkpoints as data only: a ``.ckpt`` file or a sharded (FSDP2) folder, refused if it holds code."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME

# The modules that define the types hyperparameters hold (each allows its own, common/checkpoint_types.py): imported
# here so that every process reading a checkpoint knows them, whatever else it has imported.
import datamodules.splits  # noqa: F401, E402  AnnotationSubset
import datamodules.synthetic  # noqa: F401, E402  SyntheticData
import datamodules.vqa_dataset  # noqa: F401, E402  ZoomSpec
import models.loading  # noqa: F401, E402  LoRASpec
import rl.config  # noqa: F401, E402  GRPO settings sections


class UnsafeCheckpointError(ValueError):
    """A checkpoint or state file that holds something other than data (e.g. a pickled function): not loaded."""


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint or state file read as data only (``torch.load(weights_only=True)``) onto the CPU.

    The project types that hyperparameters hold are allow-listed where they are defined (``add_safe_globals``);
    anything else that would have to be unpickled as code (a function, an arbitrary class) is refused.
    ``mmap`` maps the tensors instead of reading them (for looking at a checkpoint's metadata only).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs code to load; the message names it and what it holds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise unsafe_checkpoint_error(path, error) from None


def unsafe_checkpoint_error(path: str | Path, error: pickle.UnpicklingError) -> UnsafeCheckpointError:
    """torch's refusal of ``path`` under ``weights_only`` (a page of advice) as one line naming what it holds."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    what = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
    return UnsafeCheckpointError(
        f"{path}: refused to load, it holds code and not only data ({what}); load only checkpoints whose origin "
        "you trust, saved with plain tensors and types"
    )


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Everything but the weights of a ``.ckpt`` file or of a sharded (FSDP2) checkpoint folder."""
    path = Path(path)
    return load_checkpoint(path / _METADATA_FILENAME if path.is_dir() else path, mmap=not path.is_dir())


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
