"""Check a CT-RATE(-VQA) directory before training and report every problem, each with its file, line and field.

    python -m datamodules.check_data --data_dir data/synthetic-ctrate [--vqa_dir DIR] [--splits train valid]
        [--max_volumes N]

Everything is read by the readers training uses (``ctrate/``, ``vqa_records.py``) and judged by the checks they
apply when they read (``data_checks/``), so a problem found here is the one a loader would raise, with the same
file, line and field; only, nothing stops at the first problem: an unreadable file is one problem, and the checks go
on. The checks:

- ``csv``: each split's metadata and labels CSV (and reports CSV, when present) exist, have the columns
  ``read_split`` requires, and every row has a unique, well-formed VolumeName of that split and usable geometry /
  0-1 labels;
- ``volumes``: every volume in the metadata is on disk, ``load_ct_volume`` reads it, its values are finite and its
  HU range is plausible (``AIR_HU``, ``MIN_HU``, ``MAX_HU``), and its lesion mask, if any, lies on its grid;
- ``vqa``: ``<vqa_dir>/<split>.jsonl`` lines are well-formed, name a volume of that split's metadata and its patient;
- ``roi``: ``slice_index`` within the volume's depth and every box inside the axial slice (as ``CTVQADataset``), for
  each candidate view too.

No patient can be in two splits: a patient id is its split plus its number (``train_12``), every table lists only
volumes of its own split, and every VQA record's ``patient_id`` and ``split`` are those of its volume and file.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd

from datamodules.boxes import box_problem
from datamodules.ctrate import (
    CTRATE_LABELS,
    GEOMETRY_COLUMNS,
    REPORT_COLUMNS,
    SPLITS,
    BadSampleError,
    CTRATEPaths,
    affine_from_metadata,
    display_path,
    load_ct_volume,
    lps_grid,
    mask_grid_of,
    read_csv_checked,
)
from datamodules.data_checks import AIR_HU as AIR_HU  # the HU checks, also under their old names here
from datamodules.data_checks import MAX_HU as MAX_HU
from datamodules.data_checks import MIN_HU as MIN_HU
from datamodules.data_checks import (
    WHERE,
    CSVProblem,
    check_mask_grid,
    duplicate_problems,
    geometry_problems,
    label_problems,
    name_problems,
    row_lines,
    unknown_problems,
    volume_shape,
)
from datamodules.data_checks import hu_problems as hu_problems
from datamodules.vqa_records import read_vqa_jsonl

CHECKS = ("csv", "volumes", "vqa", "roi")
_MAX_VOLUMES_SEED = 0  # the --max_volumes sample is the same on every run


@dataclass(frozen=True)
class Problem:
    """One problem found: which check, where (file, 1-based line when there is one, field) and what."""

    check: str
    path: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = self.message if self.field is None else f"field '{self.field}': {self.message}"
        return f"{where}: {what}"


@dataclass
class _SplitMeta:
    """A split's metadata as far as it could be read: rows by VolumeName and their CSV lines."""

    readable: bool = False
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    bad_geometry: set[str] = field(default_factory=set)  # already reported; the loader cannot place these


def default_vqa_dir(data_dir: str | Path, vqa_dir: str | Path | None) -> Path | None:
    """``vqa_dir`` if given, else ``data_dir/vqa`` when that folder exists (None: no VQA files to check)."""
    if vqa_dir is not None:
        return Path(vqa_dir)
    default = Path(data_dir) / "vqa"
    return default if default.is_dir() else None


def lps_shape(path: str | Path, meta: dict[str, Any]) -> tuple[int, int, int]:
    """(X, Y, Z) of a volume as ``load_ct_volume`` returns it, from the NIfTI header alone (no voxel data read)."""
    # nibabel reads voxel data lazily: only the header is decoded. The loader's rule for what a volume is.
    header_shape = volume_shape(nib.load(str(path)).shape, display_path(path))
    return lps_grid(header_shape, affine_from_metadata(meta))


def _vqa_problem(text: str) -> Problem:
    """A ``read_vqa_jsonl`` problem ("<path> line <n>: [missing ]field '<f>' ...") as a Problem."""
    m = re.match(r"(?P<path>.*) line (?P<line>\d+): (?P<message>.*)", text, re.DOTALL)
    if m is None:
        return Problem("vqa", "?", None, None, text)
    message = m["message"]
    name = re.search(r"field '([^']+)'", message)
    if name is not None:
        message = message.removeprefix(f"field '{name[1]}' ")
        message = "missing" if message == f"missing field '{name[1]}'" else message
    return Problem("vqa", m["path"], int(m["line"]), name[1] if name else None, message)


def _where(record: dict[str, Any]) -> tuple[str, int]:
    """(path, line) of a record from the ``_where`` tag ``read_vqa_jsonl`` gives it."""
    path, line = record["_where"].rsplit(" line ", 1)
    return path, int(line)


class _Checker:
    """Runs the checks in order, collecting problems; later checks skip what an earlier one already reported."""

    def __init__(self, data_dir: Path, progress: bool) -> None:
        self.data_dir = data_dir
        self.progress = progress
        self.problems: list[Problem] = []
        self.shapes: dict[str, tuple[int, int, int] | None] = {}  # VolumeName -> LPS (X, Y, Z); None: unreadable
        self.bad_volumes: set[str] = set()  # volumes with a problem reported already

    def add(self, check: str, path: str | Path, message: str, line: int | None = None, name: str | None = None) -> None:
        self.problems.append(Problem(check, str(path), line, name, message))

    def add_csv(self, path: Path, problems: list[CSVProblem]) -> None:
        for line, name, message in sorted(problems, key=lambda p: p[0]):  # stable: a line's fields in check order
            self.add("csv", path, message, line, name)

    def read_csv(
        self, path: Path, required: Sequence[str], split: str
    ) -> tuple[pd.DataFrame, list[int], list[bool]] | None:
        """One CSV read as ``read_table`` reads it: the frame, each row's line and whether its VolumeName can be used.

        Its missing columns and the ``read_table`` problems (VolumeName missing, malformed or listed again) are
        reported; None when it cannot be read at all (reported too).
        """
        try:
            df = read_csv_checked(path, ())
            lines = row_lines(path, len(df))
        except (BadSampleError, OSError, UnicodeDecodeError, csv.Error) as e:
            self.add("csv", path, str(e).removeprefix(f"{display_path(path)}: "))
            return None
        for col in (c for c in dict.fromkeys(("VolumeName", *required)) if c not in df.columns):
            self.add("csv", path, "required column is missing", name=col)
        if "VolumeName" not in df.columns:
            return df, lines, [False] * len(df)
        names = df["VolumeName"].tolist()
        problems = name_problems(names, lines, split) + duplicate_problems(names, lines)
        self.add_csv(path, problems)
        bad = {line for line, _, _ in problems}
        return df, lines, [line not in bad for line in lines]

    def csvs(self, split: str) -> _SplitMeta:
        """Metadata, labels and reports CSVs of a split; returns what the metadata holds for the later checks."""
        paths = CTRATEPaths(self.data_dir, split)
        meta = _SplitMeta()
        read = self.read_csv(paths.metadata_csv, GEOMETRY_COLUMNS, split)
        if read is not None:
            meta.readable = True
            df, lines, usable = read
            geometry: list[CSVProblem] = []
            for row, line, ok in zip(df.to_dict(orient="records"), lines, usable, strict=True):
                if not ok:
                    continue
                name = row["VolumeName"]
                meta.rows[name], meta.lines[name] = {**row, WHERE: f"{display_path(paths.metadata_csv)}:{line}"}, line
                for col, message in geometry_problems(row):
                    if col in row:  # a missing column is reported once, not per row
                        geometry.append((line, col, message))
                    meta.bad_geometry.add(name)
            self.add_csv(paths.metadata_csv, geometry)

        read = self.read_csv(paths.labels_csv, CTRATE_LABELS, split)
        if read is not None:
            df, lines, usable = read
            problems = label_problems(df, lines, CTRATE_LABELS)
            if meta.readable:
                names = [n if ok else None for n, ok in zip(df["VolumeName"], usable, strict=True)]
                problems += unknown_problems(names, lines, set(meta.rows), display_path(paths.metadata_csv))
            self.add_csv(paths.labels_csv, problems)
        if paths.reports_csv.is_file():  # optional, as for read_split
            self.read_csv(paths.reports_csv, REPORT_COLUMNS, split)
        return meta

    def volumes(self, metas: dict[str, _SplitMeta], max_volumes: int | None) -> None:
        """Load the volumes (all, or ``max_volumes`` per split) with the training loader and check their HU."""
        todo: list[tuple[str, str]] = []
        for split, meta in metas.items():
            names = sorted(meta.rows)
            if max_volumes is not None and len(names) > max_volumes:
                names = sorted(random.Random(_MAX_VOLUMES_SEED).sample(names, max_volumes))
            todo += [(split, name) for name in names]
        from rich.console import Console
        from rich.progress import Progress

        # On stderr, so the report on stdout stays plain text.
        with Progress(console=Console(stderr=True), transient=True, disable=not self.progress) as bar:
            task = bar.add_task("volumes", total=len(todo))
            for split, name in todo:
                self.volume(split, name, metas[split])
                bar.advance(task)

    def volume(self, split: str, name: str, meta: _SplitMeta) -> None:
        paths = CTRATEPaths(self.data_dir, split)
        path = paths.volume(name)
        where = f"{display_path(paths.metadata_csv)}:{meta.lines[name]}"
        if not path.is_file():
            self.add("volumes", path, f"file not found (listed in {where})")
            self.bad_volumes.add(name)
            return
        if name in meta.bad_geometry:
            return  # its metadata row is reported; the loader cannot place it
        try:
            volume = load_ct_volume(path, meta.rows[name])  # the loader's own checks: readable, finite, HU
        except Exception as e:  # corrupt files raise many types; each is one problem, and the checks go on
            message = str(e).removeprefix(f"{display_path(path)}: ")
            self.add("volumes", path, message if isinstance(e, BadSampleError) else f"{type(e).__name__}: {e}")
            self.bad_volumes.add(name)
            return
        self.shapes[name] = (int(volume.shape[1]), int(volume.shape[2]), int(volume.shape[3]))
        mask = paths.lesion_mask(name)
        if mask.is_file():
            try:
                check_mask_grid(mask, mask_grid_of(mask, meta.rows[name]), self.shapes[name])
            except BadSampleError as e:
                self.add("volumes", mask, str(e).removeprefix(f"{display_path(mask)}: "))

    def shape(self, split: str, name: str, meta: _SplitMeta) -> tuple[int, int, int] | None:
        """A volume's LPS shape: from its loaded volume, else from its NIfTI header (cheap: --max_volumes)."""
        if name not in self.shapes:
            self.shapes[name] = None
            path = CTRATEPaths(self.data_dir, split).volume(name)
            if name in meta.bad_geometry:
                return None
            try:
                self.shapes[name] = lps_shape(path, meta.rows[name])
            except Exception as e:  # as in volume(): any failure to read is one problem
                if name not in self.bad_volumes:
                    self.add("volumes", path, f"cannot read the NIfTI header ({type(e).__name__}: {e})")
                    self.bad_volumes.add(name)
        return self.shapes[name]

    def vqa(self, split: str, path: Path, meta: _SplitMeta) -> None:
        """Lines of one VQA file (patient and split included: ``read_vqa_jsonl``), then each good record's volume
        and ROI against that split's data."""
        try:
            records, problems = read_vqa_jsonl(path, skip_bad=True, split=split)
        except Exception as e:  # a missing file, bytes that are not UTF-8, ...: the file is one problem
            message = str(e).removeprefix(f"{path}: ") if isinstance(e, BadSampleError) else f"{type(e).__name__}: {e}"
            self.add("vqa", path, message)
            return
        self.problems += [_vqa_problem(p) for p in problems]
        for record in records:
            where, line = _where(record)
            name = record["volume_name"]
            if not meta.readable:
                continue  # the metadata CSV is reported; every record would repeat it
            if name not in meta.rows:
                message = f"{name!r} is not in {display_path(CTRATEPaths(self.data_dir, split).metadata_csv)}"
                self.add("vqa", where, message, line, "volume_name")
                continue
            self.roi(record, self.shape(split, name, meta))

    def roi(self, record: dict[str, Any], shape: tuple[int, int, int] | None) -> None:
        """The checks ``CTVQADataset.image`` makes: slice within the depth, boxes inside the axial slice."""
        if shape is None:
            return
        where, line = _where(record)
        width, height, depth = shape  # axial_slice(vol, k) is vol[0, :, :, k].T: rows = Y, columns = X
        name = record["volume_name"]
        views = [("", record), *((f"views[{i}].", v) for i, v in enumerate(record.get("views") or []))]
        for prefix, view in views:  # the record's own slice, then each candidate view's (datamodules/views.py)
            if not 0 <= view["slice_index"] < depth:
                message = f"{view['slice_index']} is outside the volume's {depth} slices ({name})"
                self.add("roi", where, message, line, f"{prefix}slice_index")
            for box in view["roi"]:
                problem = box_problem(box, height, width)
                if problem is not None:
                    self.add("roi", where, f"{problem} of {name}", line, f"{prefix}roi")


def check_data(
    data_dir: str | Path,
    vqa_dir: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
    max_volumes: int | None = None,
    progress: bool = False,
) -> list[Problem]:
    """Every problem found in a CT-RATE directory (and its VQA files), in check order; empty when the data are clean.

    Args:
        data_dir: the folder holding ``dataset/`` (real or synthetic CT-RATE).
        vqa_dir: folder with ``<split>.jsonl``; default ``data_dir/vqa`` when it exists (else VQA checks are skipped).
        splits: CT-RATE splits to check.
        max_volumes: load at most this many volumes per split (a fixed random sample); ROIs of the others are
            checked against their NIfTI headers.
        progress: show a progress bar over volumes (on stderr).
    """
    checker = _Checker(Path(data_dir), progress)
    metas = {split: checker.csvs(split) for split in splits}
    checker.volumes(metas, max_volumes)
    vqa_root = default_vqa_dir(data_dir, vqa_dir)
    if vqa_root is not None:
        for split in splits:
            checker.vqa(split, vqa_root / f"{split}.jsonl", metas[split])
    return sorted(checker.problems, key=lambda p: CHECKS.index(p.check))  # stable: file order within a check


def format_report(problems: Sequence[Problem]) -> str:
    """Problems grouped by check, one per line, then a count per check."""
    lines: list[str] = []
    for check in CHECKS:
        found = [p for p in problems if p.check == check]
        lines.append(f"== {check}: {len(found) or 'ok'}")
        lines += [f"  {p}" for p in found]
    counts = ", ".join(f"{check} {sum(p.check == check for p in problems)}" for check in CHECKS)
    verdict = f"{len(problems)} problem(s)" if problems else "no problems"
    lines.append(f"summary: {counts}; {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the report; the exit code is 0 when the data are clean, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=Path("data/synthetic-ctrate"), help="folder holding dataset/")
    parser.add_argument("--vqa_dir", type=Path, default=None, help="VQA JSONL folder (default DATA_DIR/vqa if present)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--max_volumes", type=int, default=None, help="load at most N volumes per split (sampled)")
    args = parser.parse_args(argv)
    vqa_root = default_vqa_dir(args.data_dir, args.vqa_dir)
    print(f"checking {args.data_dir} (splits {', '.join(args.splits)}); VQA: {vqa_root or 'none found, skipped'}")
    problems = check_data(args.data_dir, args.vqa_dir, args.splits, args.max_volumes, progress=True)
    print(format_report(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
