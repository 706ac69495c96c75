"""CT-RATE's tables (metadata, multi-abnormality labels, reports) and ReXGroundingCT's finding texts, read and checked.

Every row read from a CSV carries ``WHERE`` (``"<file>:<line>"``), so a later problem with it names its line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from datamodules.ctrate.paths import CTRATEPaths
from datamodules.data_checks.errors import WHERE, BadSampleError, display_path
from datamodules.data_checks.tables import (
    duplicate_problems,
    label_problems,
    name_problems,
    raise_csv,
    row_lines,
    unknown_problems,
)

CTRATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
# The metadata fields the loader needs; real CT-RATE metadata has many more columns.
GEOMETRY_COLUMNS = (
    "VolumeName",
    "RescaleSlope",
    "RescaleIntercept",
    "XYSpacing",
    "ZSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)


def read_csv_checked(path: str | Path, required_columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV; a missing file, unreadable CSV or missing column raises ``BadSampleError``."""
    where = display_path(path)
    if not Path(path).is_file():
        raise BadSampleError(f"{where}: file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BadSampleError(f"{where}: cannot parse CSV ({e})") from e
    for col in required_columns:
        if col not in df.columns:
            raise BadSampleError(f"{where}: missing column '{col}'")
    return df


def read_table(path: str | Path, required_columns: Sequence[str], split: str) -> tuple[pd.DataFrame, list[int]]:
    """A CT-RATE table keyed by VolumeName, and each row's CSV line; every row's ``WHERE`` says ``<file>:<line>``.

    Raises ``BadSampleError`` naming file, line and field for a VolumeName that is missing, names no CT-RATE
    volume of ``split``, or is listed again (a join on it would double that volume's rows), as ``check_data``
    reports them.
    """
    df = read_csv_checked(path, ("VolumeName", *required_columns))
    lines = row_lines(path, len(df))
    names = df["VolumeName"].tolist()
    raise_csv(path, name_problems(names, lines, split) + duplicate_problems(names, lines))
    df[WHERE] = [f"{display_path(path)}:{line}" for line in lines]
    return df, lines


def read_metadata(root: str | Path, split: str) -> dict[str, dict[str, Any]]:
    """A split's metadata rows by VolumeName (with ``WHERE``); geometry is checked per volume, when it is loaded."""
    frame, _ = read_table(CTRATEPaths(Path(root), split).metadata_csv, GEOMETRY_COLUMNS, split)
    return {row["VolumeName"]: row for row in frame.to_dict(orient="records")}


def read_split(root: str | Path, split: str) -> pd.DataFrame:
    """Metadata joined with the 18 labels (and reports when present), one row per volume, sorted by name.

    Each row's ``WHERE`` is its metadata line (the loaders name it for a geometry problem). Raises
    ``BadSampleError`` (``<file>:<line>: field '<f>': ...``) for the ``read_table`` problems of any of the three
    tables, a label that is not 0 or 1, or a labelled volume without a metadata row.
    """
    paths = CTRATEPaths(Path(root), split)
    meta, _ = read_table(paths.metadata_csv, GEOMETRY_COLUMNS, split)
    labels, lines = read_table(paths.labels_csv, CTRATE_LABELS, split)
    raise_csv(paths.labels_csv, label_problems(labels, lines, CTRATE_LABELS))
    table = display_path(paths.metadata_csv)
    raise_csv(paths.labels_csv, unknown_problems(labels["VolumeName"].tolist(), lines, set(meta["VolumeName"]), table))
    df = labels.drop(columns=[WHERE]).merge(meta, on="VolumeName", how="left")
    if paths.reports_csv.is_file():
        reports, _ = read_table(paths.reports_csv, REPORT_COLUMNS, split)
        df = df.merge(reports[list(REPORT_COLUMNS)], on="VolumeName", how="left")
    return df.sort_values("VolumeName").reset_index(drop=True)


@dataclass(frozen=True)
class Finding:
    """One ReXGroundingCT finding: free text grounded by mask channel ``index``."""

    index: int
    text: str


def load_grounding(root: str | Path) -> dict[str, list[Finding]]:
    """``rexgroundingct/dataset.json`` as {VolumeName: findings sorted by channel}; {} if the file is absent.

    The release groups entries by split ({"train": [...], "val": [...], "test": [...]}), each entry
    ``{"name": "train_1741_b_2.nii.gz", "findings": {"0": "...", ...}}``; finding k is mask channel k.
    """
    path = CTRATEPaths(Path(root)).grounding_json
    if not path.is_file():
        return {}
    where = display_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadSampleError(f"{where}: not valid JSON ({e})") from e
    entries = [e for v in data.values() if isinstance(v, list) for e in v] if isinstance(data, dict) else data
    out: dict[str, list[Finding]] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("findings"), dict):
            raise BadSampleError(f"{where}: entry {n} needs fields 'name' and 'findings'")
        try:
            findings = [Finding(int(k), str(t)) for k, t in entry["findings"].items()]
        except ValueError as e:
            raise BadSampleError(f"{where}: entry {entry['name']!r} field 'findings' has a non-integer key") from e
        out[entry["name"]] = sorted(findings, key=lambda f: f.index)
    return out
