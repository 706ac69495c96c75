"""Patient-level splits: the validation hold-out of CT-RATE's train split and the annotation-efficiency parts."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from common.checkpoint_types import allow_in_checkpoints
from datamodules.ctrate import BadSampleError

log = logging.getLogger(__name__)


def split_patients(patients: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The first ``val_fraction`` of a seeded shuffle of the sorted ids (at least one when the fraction is positive),
    so the split is stable across runs: validation patients, or the annotated ones of the training split."""
    ordered = sorted(set(patients))
    random.Random(seed).shuffle(ordered)
    n_val = max(1, round(len(ordered) * val_fraction)) if val_fraction > 0 else 0
    return set(ordered[:n_val])


@dataclass
class AnnotationSubset:
    """One part of the training split, divided by patient for the annotation-efficiency experiment: the
    ``annotated`` patients' questions keep their reasoning traces, the ``answers_only`` ones' keep only their answers.

    The division is a seeded shuffle of the sorted training patients (the datamodule's seed), so the two parts of one
    seed are disjoint and together are the training split; validation and test are never divided.
    """

    part: Literal["annotated", "answers_only"]
    fraction: float = 0.2  # share of training patients whose questions keep their reasoning traces

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"annotation.fraction {self.fraction} is not strictly between 0 and 1")
        if self.part not in ("annotated", "answers_only"):
            raise ValueError(f"annotation.part {self.part!r} is not 'annotated' or 'answers_only'")


def annotation_part(
    records: list[dict[str, Any]], spec: AnnotationSubset | None, seed: int, where: str
) -> list[dict[str, Any]]:
    """The training records of ``spec``'s part (all of them when it is None); ``answers_only`` ones are copies
    with an empty reasoning. Raises ``BadSampleError`` naming ``where`` when the part would hold no patient."""
    if spec is None:
        return records
    patients = sorted({r["patient_id"] for r in records})
    annotated = split_patients(patients, spec.fraction, seed)
    keep = [r for r in records if (r["patient_id"] in annotated) == (spec.part == "annotated")]
    if not keep:
        raise BadSampleError(
            f"{where}: annotation.fraction={spec.fraction} leaves no {spec.part} "
            f"patient among the {len(patients)} training patients"
        )
    log.info(
        "annotation %s: %d of %d training patients", spec.part, len({r["patient_id"] for r in keep}), len(patients)
    )
    if spec.part == "answers_only":
        keep = [{**r, "reasoning": ""} for r in keep]
    return keep


# Saved in the data module's hyperparameters; checkpoints before the renovation name it datamodules.ct_vqa.
allow_in_checkpoints(AnnotationSubset, old_module="datamodules.ct_vqa")
