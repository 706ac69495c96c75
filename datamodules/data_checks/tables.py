"""CSV table checks: VolumeNames (pattern, split, repeats, unknown keys), label cells, and each row's line.

Each check returns ``CSVProblem``s ``(line, field, message)``; ``raise_csv`` turns the first into a ``BadSampleError``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamodules.data_checks.errors import display_path, raise_first

SPLITS = ("train", "valid")
VOLUME_NAME_RE = re.compile(r"^([a-z]+)_(\d+)_([a-z]+)_(\d+)\.nii\.gz$")
CSVProblem = tuple[int, str, str]  # (1-based line, field, message)


def record_lines(path: str | Path) -> list[int]:
    """The line each CSV record starts on (header first); quoted fields may span lines, so not simply i + 2."""
    starts: list[int] = []
    with Path(path).open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        before = 0
        for record in reader:
            if record:  # pandas skips blank lines too
                starts.append(before + 1)
            before = reader.line_num
    return starts


def row_lines(path: str | Path, rows: int) -> list[int]:
    """The CSV line of each of a ``pd.read_csv`` frame's ``rows`` rows."""
    starts = record_lines(path)
    if len(starts) != rows + 1:  # the two parsers disagree (unusual quoting): count lines as pandas would
        starts = list(range(1, rows + 2))
    return starts[1:]


def duplicate_problems(keys: Sequence[Any], lines: Sequence[int], field: str = "VolumeName") -> list[CSVProblem]:
    """One problem per repeat of a key that must be unique (a join on it would double rows), at the repeat's line."""
    first: dict[Any, int] = {}
    out = []
    for key, line in zip(keys, lines, strict=True):
        if isinstance(key, float) and math.isnan(key):
            continue  # a missing key is its own problem
        if key in first:
            out.append((line, field, f"{key!r} is listed again (first on line {first[key]})"))
        else:
            first[key] = line
    return out


def name_problems(keys: Sequence[Any], lines: Sequence[int], split: str | None = None) -> list[CSVProblem]:
    """VolumeNames that name no CT-RATE volume of a known split (the loaders find files and splits by name), or,
    with ``split``, a volume of another split than the table's (its row would override that split's own row, and
    its patient would sit in two splits)."""
    out = []
    for key, line in zip(keys, lines, strict=True):
        m = VOLUME_NAME_RE.match(key) if isinstance(key, str) else None
        if not isinstance(key, str):
            out.append((line, "VolumeName", "missing"))
        elif m is None:
            out.append((line, "VolumeName", f"{key!r} does not match '<split>_<patient>_<scan>_<recon>.nii.gz'"))
        elif m.group(1) not in SPLITS:
            out.append((line, "VolumeName", f"{key!r}: split {m.group(1)!r} is not one of {SPLITS}"))
        elif split is not None and m.group(1) != split:
            out.append(
                (line, "VolumeName", f"{key!r} is a volume of split {m.group(1)!r}, not of this table's {split!r}")
            )
    return out


def unknown_problems(keys: Sequence[Any], lines: Sequence[int], known: set[str], table: str) -> list[CSVProblem]:
    """Keys with no row in ``table`` (whose keys are ``known``): a join on them would leave the row's fields empty."""
    return [
        (line, "VolumeName", f"{key!r} has no row in {table}")
        for key, line in zip(keys, lines, strict=True)
        if isinstance(key, str) and key not in known
    ]


def label_problems(frame: pd.DataFrame, lines: Sequence[int], labels: Sequence[str]) -> list[CSVProblem]:
    """Label cells that are not 0 or 1, by line then column. Judged by number: one bad cell makes pandas read its
    whole column as text, and only the cells to fix are reported."""
    out = []
    for col in (c for c in labels if c in frame.columns):
        bad = ~pd.to_numeric(frame[col], errors="coerce").isin([0, 1])
        values = frame[col].tolist()  # Python scalars: their repr is the cell as written (2, not np.int64(2))
        out += [(lines[i], col, f"must be 0 or 1, got {values[i]!r}") for i in np.flatnonzero(bad)]
    return sorted(out, key=lambda p: (p[0], list(labels).index(p[1])))


def raise_csv(path: str | Path, problems: Sequence[CSVProblem]) -> None:
    """Raise ``<file>:<line>: field '<f>': <message>`` for the first CSV problem, if any."""
    if problems:
        line, name, message = problems[0]
        raise_first(f"{display_path(path)}:{line}", [(name, message)])
