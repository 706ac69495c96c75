"""Axial HU slices kept on disk, so that a CT volume is decoded once for each slice its questions use, not at
every epoch and every run.

Decoding a real CT-RATE volume (512×512×a few hundred slices, gzipped NIfTI) takes about 0.6 s, and with shuffled
questions the in-memory ``VolumeCache`` rarely hits; a cached slice is one small ``.npy`` read (about 1 ms). The
CT-RATE-VQA questions use a few slices per volume, so the cache is a small fraction of the data set's size.

A slice is stored under ``<cache_dir>/<VolumeName>/<key>/<index>.npy``; ``key`` is a hash of the volume file's size
and modification time and of its metadata row (rescale slope and intercept, spacing, orientation), so a replaced
volume or a corrected metadata row is decoded afresh rather than read stale. Slices are written atomically (a
temporary file renamed into place): workers that cut the same slice at once, or a run killed mid-write, never
leave a half-written file. HU are stored as int16 where that is exact (fixed CT-RATE volumes), else float32.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.ctrate import VolumeCache
from evaluation.report import atomic_write_bytes


class SliceCache:
    """Axial HU slices on disk in front of a ``VolumeCache``."""

    def __init__(self, cache_dir: str | Path, volumes: VolumeCache) -> None:
        self.cache_dir = Path(cache_dir)
        self.volumes = volumes

    def folder(self, volume_name: str, meta: Mapping[str, Any] | None) -> Path:
        """Where this volume's slices go, for its file as it is now and this metadata row."""
        stat = self.volumes.path(volume_name).stat()
        source = json.dumps([stat.st_size, stat.st_mtime_ns, dict(meta or {})], sort_keys=True, default=str)
        return self.cache_dir / volume_name / hashlib.sha256(source.encode()).hexdigest()[:16]

    def get(
        self, volume_name: str, meta: Mapping[str, Any] | None, index: int, cut: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Slice ``index`` of the volume as float32 HU: read from disk, or ``cut()`` from the volume and stored.

        A missing volume file is left to ``cut`` (whose loader names the file); nothing is cached for it.
        """
        try:
            path = self.folder(volume_name, meta) / f"{index}.npy"
        except FileNotFoundError:
            return cut()
        if path.is_file():
            return np.load(path).astype(np.float32, copy=False)
        hu = cut()
        as_int = hu.astype(np.int16)
        buffer = io.BytesIO()
        np.save(buffer, as_int if np.array_equal(as_int, hu) else hu)
        atomic_write_bytes(path, buffer.getvalue())
        return hu
