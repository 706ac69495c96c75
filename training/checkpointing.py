"""Checkpoints a crash cannot spoil: written atomically, with the RNG states an exact resume needs."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from common.files import replace_atomically
from training.checkpoint_selection import record_start

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


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, made safe to kill at any moment.

    * Every checkpoint is written under a hidden ``.<name>.partial`` name in the same folder, flushed to disk and
      renamed into place: ``last.ckpt`` is always a complete checkpoint, whenever the process dies.
    * The global RNG states go into the checkpoint and come back on resume, so dropout and anything else drawing
      from them continue as in the uninterrupted run (data order and rollouts have their own seeds).
    * A fit that does not resume refuses a checkpoint folder that already holds another run's checkpoints,
      instead of mixing its files with that run's (resume it with ``--ckpt_path last``, or pick another folder).
    * Each new top-k checkpoint also refreshes the ``last`` checkpoint of the other ``save_last`` callbacks: its
      record of the callbacks (which best files exist) is never older than the files in the folder.
    * Under ``fast_dev_run`` nothing is written and nothing refused: a debug run leaves no trace.

    * With ``start_candidate: true`` (and a ``monitor``), a ``validate`` run of the starting model (no
      ``--ckpt_path``) records its score in ``start.json``: ``best`` is then the starting model unless a checkpoint
      beats it (``checkpoint_selection.best_checkpoint``), so a stage that made the model worse is not exported.

    Use it with ``every_n_train_steps`` and ``save_last: true`` for the resume point, and as usual with
    ``monitor`` for the best checkpoints.
    """

    def __init__(self, *args: Any, start_candidate: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if start_candidate and (self.monitor is None or self.dirpath is None):
            raise ValueError("ResumableCheckpoint: start_candidate needs a monitor and a dirpath")
        self.start_candidate = start_candidate

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """In a ``validate`` run of the starting model, record its score as the start (see the class docstring)."""
        super().on_validation_end(trainer, pl_module)
        starting = trainer.state.fn == "validate" and trainer.ckpt_path is None
        if not (self.start_candidate and starting) or trainer.sanity_checking or trainer.fast_dev_run:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is not None and trainer.is_global_zero:
            path = record_start(self.dirpath, self.monitor, float(score), pl_module.hparams.get("model_path"))
            log.info("recorded the starting model's %s = %.4g in %s", self.monitor, float(score), path)

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
        if trainer.fast_dev_run:
            return
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
        if self.monitor is not None and final.name != Path(self.last_model_path or "").name:
            self._refresh_last_checkpoints(trainer)

    def _refresh_last_checkpoints(self, trainer: L.Trainer) -> None:
        """Re-save the ``last`` of the other ``save_last`` callbacks after a new top-k save: written at the
        training step before this validation, it would record the best file this save is about to replace."""
        for callback in trainer.checkpoint_callbacks:
            if callback is not self and isinstance(callback, ResumableCheckpoint) and callback.save_last:
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last`` once more when training ends between two ``every_n_train_steps``: it is the end state.
        Not under ``fast_dev_run`` (Lightning's own ``on_train_end`` would save it even then)."""
        if trainer.fast_dev_run:
            return
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._last_global_step_saved != trainer.global_step and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
