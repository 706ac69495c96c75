"""CT-RATE and ReXGroundingCT readers: the one loading path for real and synthetic data.

Canonical orientation everywhere is MONAI/nibabel ``LPS``: voxel index i grows towards the patient's
Left, j towards Posterior, k towards Superior. ``axial_slice(vol, k)`` is then ``vol[0, :, :, k].T``:
rows = j (anterior at the top), columns = i (patient's right on the image's left, radiological view).

One module per job: ``paths`` (file layout, VolumeName parts), ``tables`` (CSV tables and finding texts),
``volumes`` (HU/LPS volumes), ``masks`` (lesion masks, components, lungs, boxes). This package re-exports their
public names, and the data checks' names the readers raise with, so ``from datamodules.ctrate import X`` works.
"""

from datamodules.ctrate.masks import (
    bbox_of,
    label_components,
    largest_component,
    load_lesion_mask,
    lps_grid,
    lung_mask_from_hu,
    mask_grid_of,
)
from datamodules.ctrate.paths import CTRATEPaths, parse_volume_name, patient_id
from datamodules.ctrate.tables import (
    CTRATE_LABELS,
    GEOMETRY_COLUMNS,
    REPORT_COLUMNS,
    Finding,
    load_grounding,
    read_csv_checked,
    read_metadata,
    read_split,
    read_table,
)
from datamodules.ctrate.volumes import (
    AXCODES,
    VolumeCache,
    affine_from_metadata,
    axial_slice,
    list_field,
    load_ct_volume,
    looks_raw,
    read_nifti,
)
from datamodules.data_checks.errors import WHERE, BadSampleError, display_path
from datamodules.data_checks.tables import SPLITS, VOLUME_NAME_RE

__all__ = [
    "AXCODES",
    "CTRATE_LABELS",
    "GEOMETRY_COLUMNS",
    "REPORT_COLUMNS",
    "SPLITS",
    "VOLUME_NAME_RE",
    "WHERE",
    "BadSampleError",
    "CTRATEPaths",
    "Finding",
    "VolumeCache",
    "affine_from_metadata",
    "axial_slice",
    "bbox_of",
    "display_path",
    "label_components",
    "largest_component",
    "list_field",
    "load_ct_volume",
    "load_grounding",
    "load_lesion_mask",
    "looks_raw",
    "lps_grid",
    "lung_mask_from_hu",
    "mask_grid_of",
    "parse_volume_name",
    "patient_id",
    "read_csv_checked",
    "read_metadata",
    "read_nifti",
    "read_split",
    "read_table",
]
