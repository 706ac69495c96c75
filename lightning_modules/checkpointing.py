"""Checkpoints a crash cannot spoil: written atomically, with the RNG states an exact resume needs."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch, numpy, python, CUDA) as plain types that load under ``weights_only``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
        **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or every file of a sharded-checkpoint folder, and the folder) to disk."""
    paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for p in [*paths, path.parent]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_atomically(partial: Path, final: Path) -> None:
    """Move a finished ``partial`` checkpoint (file or sharded folder) to ``final`` in one rename."""
    _fsync(partial)
    if partial.is_dir() and final.exists():
        # A folder cannot be renamed over a non-empty one: move the old one aside first. A crash in between
        # leaves the new checkpoint complete under its partial name and the old one intact beside it.
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, made safe to kill at any moment.

    * Every checkpoint is written under a hidden ``.<name>.partial`` name in the same folder, flushed to disk and
      renamed into place: ``last.ckpt`` is always a complete checkpoint, whenever the process dies.
    * The global RNG states go into the checkpoint and come back on resume, so dropout and anything else drawing
      from them continue as in the uninterrupted run (data order and rollouts have their own seeds).
    * A fit that does not resume refuses a checkpoint folder that already holds another run's checkpoints,
      instead of mixing its files with that run's (resume it with ``--ckpt_path last``, or pick another folder).

    Use it with ``every_n_train_steps`` and ``save_last: true`` for the resume point, and as usual with
    ``monitor`` for the best checkpoints.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.dirpath is None:
            return
        folder = Path(self.dirpath)
        if trainer.is_global_zero and folder.is_dir():
            for stale in folder.glob(f".*{PARTIAL_SUFFIX}"):  # a write the last crash interrupted
                log.warning("removing the unfinished checkpoint %s", stale)
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse to mix a new run's checkpoints with another run's: the first moment ``ckpt_path`` is known under
        every strategy (FSDP2 restores after setup), and still before any checkpoint is written."""
        folder = Path(self.dirpath) if self.dirpath is not None else None
        existing = sorted(p.name for p in folder.glob(f"*{self.FILE_EXTENSION}")) if folder and folder.is_dir() else []
        if existing and trainer.ckpt_path is None:
            raise FileExistsError(
                f"{folder} already holds checkpoints of another run ({', '.join(existing[:3])}"
                f"{', …' if len(existing) > 3 else ''}). Resume it with --ckpt_path last, or give this run its own "
                "folder (trainer.default_root_dir and the checkpoint callbacks' dirpath), or delete that folder."
            )

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        final = Path(filepath)
        partial = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
        super()._save_checkpoint(trainer, str(partial))
        if trainer.is_global_zero:
            replace_atomically(partial, final)
        trainer.strategy.barrier("ResumableCheckpoint")
        self._last_checkpoint_saved = filepath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last`` once more when training ends between two ``every_n_train_steps``: it is the end state."""
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._last_global_step_saved != trainer.global_step and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
