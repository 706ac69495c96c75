"""Writing files so that a crash or a concurrent reader never sees half of one, and file digests.

Every temp-and-rename writer in the project goes through here: reports and JSON (:func:`atomic_write_text`),
figures (:func:`atomic_path`), Hugging Face model folders and checkpoints (:func:`atomic_path`,
:func:`replace_atomically`). The temp name is a hidden sibling of the target, so the final rename stays on one
filesystem and is atomic (POSIX ``rename``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_tree(path: Path) -> None:
    """Flush ``path`` (a file, or every file of a folder, and the parent folder) to disk."""
    paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for p in [*paths, path.parent]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_atomically(partial: Path, final: Path) -> None:
    """Move a finished ``partial`` file or folder to ``final`` in one rename, after flushing it to disk."""
    fsync_tree(partial)
    if partial.is_dir() and final.exists():
        # A folder cannot be renamed over a non-empty one: move the old one aside first. A crash in between
        # leaves the new folder complete under its partial name and the old one intact beside it.
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)


@contextmanager
def atomic_path(path: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Yield a hidden temp path beside ``path`` to write into; on success it replaces ``path`` in one rename.

    ``folder=True`` yields an empty temp folder (for ``save_pretrained``), otherwise a temp file name. On any
    error the temp path is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        replace_atomically(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike) -> str | None:
    """Hex SHA-256 of a file's bytes, or None when it does not exist (``hashlib.file_digest``)."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
