"""The data checks, one set: every reader applies them when it reads, and ``check_data`` runs them over a whole data
set ahead of time, so the two can never disagree.

Each check returns its problems, ``(line, field, message)`` for a CSV or a message for a file, and ``raise_first``
turns the first into a ``BadSampleError`` naming file, line and field:
``dataset/metadata/train_metadata.csv:5: field 'RescaleSlope': 0 is not a non-zero number``.
Rows read from a CSV carry where they came from in ``WHERE`` (``"<file>:<line>"``), as VQA records carry ``_where``.

One module per job: ``errors`` (the error and where it points), ``volumes`` (shape, geometry, HU, mask grid),
``tables`` (CSV rows). This package re-exports their public names: the one set, under one name.
"""

from datamodules.data_checks.errors import WHERE, BadSampleError, display_path, raise_first, reading
from datamodules.data_checks.tables import (
    SPLITS,
    VOLUME_NAME_RE,
    CSVProblem,
    duplicate_problems,
    label_problems,
    name_problems,
    raise_csv,
    record_lines,
    row_lines,
    unknown_problems,
)
from datamodules.data_checks.volumes import (
    AIR_HU,
    MAX_HU,
    MIN_HU,
    check_geometry,
    check_mask_grid,
    check_volume,
    geometry_problems,
    hu_problems,
    number,
    numbers,
    row_where,
    volume_problem,
    volume_shape,
)

__all__ = [
    "AIR_HU",
    "MAX_HU",
    "MIN_HU",
    "SPLITS",
    "VOLUME_NAME_RE",
    "WHERE",
    "BadSampleError",
    "CSVProblem",
    "check_geometry",
    "check_mask_grid",
    "check_volume",
    "display_path",
    "duplicate_problems",
    "geometry_problems",
    "hu_problems",
    "label_problems",
    "name_problems",
    "number",
    "numbers",
    "raise_csv",
    "raise_first",
    "reading",
    "record_lines",
    "row_lines",
    "row_where",
    "unknown_problems",
    "volume_problem",
    "volume_shape",
]
