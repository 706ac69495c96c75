"""One VQA record as the builder writes it: its keys, in order, and the builder-side check of every record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datamodules.boxes import box_problem
from datamodules.ctrate import BadSampleError

VQA_KEYS = (
    "id",
    "split",
    "patient_id",
    "volume_name",
    "question_type",
    "question",
    "answer",
    "options",
    "slice_index",
    "roi",
    "roi_source",
    "abnormality",
    "reasoning",
)


def check_record(rec: Mapping[str, Any], shape_xy: tuple[int, int], where: str) -> None:
    """Builder-side validation: exact keys, answer among options, every box non-empty and inside the slice.

    ``shape_xy`` is the volume's in-plane (X, Y) size, so a slice has Y rows and X columns. Raises
    ``BadSampleError`` naming ``where`` and the field.
    """
    if tuple(rec) not in (VQA_KEYS, (*VQA_KEYS, "views")):
        raise BadSampleError(f"{where}: keys {list(rec)} differ from {list(VQA_KEYS)} (+ 'views')")
    if rec["answer"] not in rec["options"]:
        raise BadSampleError(f"{where}: field 'answer' {rec['answer']!r} is not one of {rec['options']}")
    width, height = int(shape_xy[0]), int(shape_xy[1])
    if not rec["roi"]:
        raise BadSampleError(f"{where}: field 'roi' is empty")
    for field, boxes in [
        ("roi", rec["roi"]),
        *((f"views[{i}].roi", v["roi"]) for i, v in enumerate(rec.get("views", []))),
    ]:
        for box in boxes:
            problem = box_problem(box, height, width)
            if problem is not None:
                raise BadSampleError(f"{where}: field '{field}' {problem}")
