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

Only slices of volumes that passed the loader's checks (``datamodules/data_checks/``) are stored: ``cut`` loads the
volume with them. The key also holds ``CHECKS_VERSION``, so slices stored before a check existed are cut again, through
it. A slice read back is checked cheaply (a 2D array of finite values); one that is not is cut again, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_bytes
from datamodules.ctrate.volumes import VolumeCache
from datamodules.data_checks.errors import WHERE

log = logging.getLogger(__name__)
# Raise when the loader's checks change what it refuses: slices cut under older checks are then cut again.
CHECKS_VERSION = 1


class SliceCache:
    """Axial HU slices on disk in front of a ``VolumeCache``."""

    def __init__(self, cache_dir: str | Path, volumes: VolumeCache) -> None:
        self.cache_dir = Path(cache_dir)
        self.volumes = volumes

    def folder(self, volume_name: str, meta: Mapping[str, Any] | None) -> Path:
        """Where this volume's slices go, for its file as it is now and this metadata row."""
        stat = self.volumes.path(volume_name).stat()
        row = {k: v for k, v in (meta or {}).items() if k != WHERE}  # where the row sits in its CSV is not its content
        source = json.dumps([stat.st_size, stat.st_mtime_ns, row, CHECKS_VERSION], sort_keys=True, default=str)
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
        if path.is_file() and (hu := self._read(path)) is not None:
            return hu
        hu = cut()
        as_int = hu.astype(np.int16)
        buffer = io.BytesIO()
        np.save(buffer, as_int if np.array_equal(as_int, hu) else hu)
        atomic_write_bytes(path, buffer.getvalue())
        return hu

    @staticmethod
    def _read(path: Path) -> np.ndarray | None:
        """A stored slice as float32 HU; None when it cannot be read or is not a 2D array of finite values."""
        try:
            hu = np.load(path)  # no pickles: allow_pickle is off by default
        except Exception as e:  # truncated or foreign files raise many types; the slice is cut again either way
            log.warning("%s: cannot read the cached slice (%s: %s); cutting it again", path, type(e).__name__, e)
            return None
        if hu.ndim != 2 or (hu.dtype.kind == "f" and not np.isfinite(hu).all()):
            log.warning("%s: the cached slice is not a 2D array of finite HU; cutting it again", path)
            return None
        return hu.astype(np.float32, copy=False)
