"""Where CT-RATE and ReXGroundingCT files live, and what a CT-RATE VolumeName says (split, patient, scan, recon)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datamodules.data_checks.errors import BadSampleError
from datamodules.data_checks.tables import SPLITS, VOLUME_NAME_RE


def parse_volume_name(name: str) -> tuple[str, int, str, int]:
    """``train_12_a_1.nii.gz`` -> ("train", 12, "a", 1)."""
    m = VOLUME_NAME_RE.match(name)
    if m is None:
        raise BadSampleError(f"VolumeName {name!r} does not match '<split>_<patient>_<scan>_<recon>.nii.gz'")
    return m.group(1), int(m.group(2)), m.group(3), int(m.group(4))


def patient_id(name: str) -> str:
    """``train_12_a_1.nii.gz`` -> "train_12": the patient, whose scans must all sit on one side of a split."""
    split, pid, _, _ = parse_volume_name(name)
    return f"{split}_{pid}"


@dataclass(frozen=True)
class CTRATEPaths:
    """Where CT-RATE (and ReXGroundingCT) files live under ``root`` for one split.

    ``root/dataset/...`` mirrors the CT-RATE Hugging Face repo; ``root/rexgroundingct/`` mirrors the
    ReXGroundingCT repo (``dataset.json`` + ``segmentations/<VolumeName>``).
    """

    root: Path
    split: str = "train"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise BadSampleError(f"split {self.split!r} is not one of {SPLITS}")
        object.__setattr__(self, "root", Path(self.root))

    @property
    def _csv_stem(self) -> str:
        # CT-RATE names its validation tables inconsistently: validation_* vs valid_*.
        return "train" if self.split == "train" else "validation"

    @property
    def metadata_csv(self) -> Path:
        return self.root / "dataset" / "metadata" / f"{self._csv_stem}_metadata.csv"

    @property
    def reports_csv(self) -> Path:
        return self.root / "dataset" / "radiology_text_reports" / f"{self._csv_stem}_reports.csv"

    @property
    def labels_csv(self) -> Path:
        return self.root / "dataset" / "multi_abnormality_labels" / f"{self.split}_predicted_labels.csv"

    def volume(self, volume_name: str) -> Path:
        split, pid, scan, _ = parse_volume_name(volume_name)
        folder = self.root / "dataset" / split / f"{split}_{pid}" / f"{split}_{pid}_{scan}"
        return folder / volume_name

    @property
    def grounding_json(self) -> Path:
        return self.root / "rexgroundingct" / "dataset.json"

    def lesion_mask(self, volume_name: str) -> Path:
        return self.root / "rexgroundingct" / "segmentations" / volume_name

    def region_mask(self, volume_name: str, structure: str, regions_dir: str = "totalsegmentator") -> Path:
        """One organ/region mask as TotalSegmentator writes them: ``<regions_dir>/<volume stem>/<structure>.nii.gz``
        (``regions_dir`` relative to the root unless absolute)."""
        stem = volume_name.removesuffix(".nii.gz")
        return self.root / regions_dir / stem / f"{structure}.nii.gz"
