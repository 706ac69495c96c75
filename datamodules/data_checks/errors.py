"""The data error and how it names where a problem is: ``BadSampleError``, ``display_path``, ``reading``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

WHERE = "_where"  # a CSV row's "<file>:<line>", set by the readers; never a column of the files themselves


class BadSampleError(ValueError):
    """A data problem the user can fix; the message names the file, the line (if any) and the field."""


def display_path(path: str | Path) -> str:
    """Path from the dataset-level folder on (``dataset/...``, ``rexgroundingct/...``), else as given."""
    parts = Path(path).parts
    for anchor in ("dataset", "rexgroundingct", "vqa"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) :])
    return str(path)


def raise_first(where: str, problems: Sequence[tuple[str | None, str]]) -> None:
    """Raise ``BadSampleError("<where>: field '<f>': <message>")`` for the first (field, message), if any."""
    if problems:
        name, message = problems[0]
        raise BadSampleError(f"{where}: {message}" if name is None else f"{where}: field '{name}': {message}")


@contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Any failure inside the block (header or deferred voxel decoding) as ``<file>: cannot read <what> (...)``.

    nibabel and pydicom read headers eagerly and voxels on first access, so the access must be inside the block too.
    """
    try:
        yield
    except BadSampleError:
        raise
    except Exception as e:  # gzip, zlib, nibabel, pydicom, numpy raise many types for corrupt files; all mean this
        raise BadSampleError(f"{display_path(path)}: cannot read {what} ({type(e).__name__}: {e})") from e
