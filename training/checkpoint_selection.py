"""Which checkpoint ``best`` means: the best one on disk by the monitored metric, or the starting model itself.

A fine-tuning stage (GRPO after SFT) can make a model worse. With ``ResumableCheckpoint(start_candidate=True)``,
a ``validate`` run of the starting model (no ``--ckpt_path``, before the fit) records its validation score in
``<dirpath>/start.json``; ``best`` is then the starting model unless a checkpoint of the fit beats it strictly.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from common.files import atomic_write_text
from training.checkpoint_files import checkpoint_metadata

log = logging.getLogger(__name__)

START_FILE = "start.json"


def recorded_score(path: str | Path, monitor: str) -> float | None:
    """The ``monitor`` value a top-k checkpoint was saved with, as its saving callback recorded it in the
    checkpoint itself (``best_k_models``); None for a checkpoint no callback monitoring ``monitor`` saved."""
    path = Path(path)
    for state in checkpoint_metadata(path).get("callbacks", {}).values():
        if not isinstance(state, dict) or state.get("monitor") != monitor:
            continue
        for saved, score in (state.get("best_k_models") or {}).items():
            # Recorded as written (often absolute): match by name, the run folder may have moved.
            if Path(saved).name == path.name and score is not None:
                return float(score)
    return None


def record_start(dirpath: str | Path, monitor: str, score: float, model_path: str | None) -> Path:
    """Write the starting model's validation ``score`` of ``monitor`` to ``<dirpath>/start.json`` (atomically)."""
    record = {"monitor": monitor, "score": score, "model_path": model_path}
    return atomic_write_text(Path(dirpath) / START_FILE, json.dumps(record, indent=2) + "\n")


def start_score(dirpath: str | Path, monitor: str, model_path: str | None) -> float | None:
    """The recorded starting score of ``monitor`` in ``dirpath`` when it was recorded for ``model_path`` (the
    model the checkpoints started from); None when there is no such record."""
    path = Path(dirpath) / START_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("monitor") != monitor or record.get("model_path") != model_path:
        log.warning("%s: recorded for %s / %s, not %s / %s: ignored", path, record.get("model_path"),
                    record.get("monitor"), model_path, monitor)  # fmt: skip
        return None
    score = record.get("score")
    return float(score) if isinstance(score, int | float) and math.isfinite(score) else None


def _model_path(checkpoint: Path) -> Any:
    return checkpoint_metadata(checkpoint).get("hyper_parameters", {}).get("model_path")


def best_checkpoint(dirpath: str | Path, monitor: str, mode: str) -> Path | None:
    """The best checkpoint on disk in ``dirpath`` by ``monitor`` (``mode`` ``max`` or ``min``), or None when the
    starting model's recorded score (``start.json``) is at least as good: then the start is the best model.

    Looked up among the files themselves, each scored by its own record, and not in another checkpoint's record
    of them (``last.ckpt``'s can name a file a later save replaced). Sharded checkpoint folders count as files.

    Raises:
        FileNotFoundError: no checkpoint in ``dirpath`` was saved for ``monitor`` (a start alone is not enough).
    """
    folder = Path(dirpath)
    candidates = [p for p in folder.glob(f"*{ModelCheckpoint.FILE_EXTENSION}") if not p.name.startswith(".")]
    scores = {p: s for p in sorted(candidates) if (s := recorded_score(p, monitor)) is not None}
    if not scores:
        raise FileNotFoundError(
            f"{folder}: no checkpoint was saved as best by {monitor!r} (no validation yet?); use --ckpt_path last"
        )
    best = (max if mode == "max" else min)(scores, key=scores.__getitem__)
    start = start_score(folder, monitor, _model_path(best))
    if start is not None and not (scores[best] > start if mode == "max" else scores[best] < start):
        log.warning(
            "no gain over the starting model on validation: %s %.4g at the start, %.4g at best (%s); "
            "the best model is the starting model", monitor, start, scores[best], best.name,
        )  # fmt: skip
        return None
    return best
