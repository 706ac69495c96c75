"""The one check of a zoom box against its axial slice; every caller wraps the answer in its own error.

Boxes are ``[x0, y0, x1, y1]`` display pixels of ``axial_slice(volume, k)`` (rows Y, columns X), exclusive ends.
"""

from __future__ import annotations

from collections.abc import Sequence


def box_problem(box: Sequence[int], height: int, width: int) -> str | None:
    """Why ``box`` is not a non-empty box inside a ``height``×``width`` (rows × columns) slice, or None if it is.

    The text names the box and the slice as ``W×H`` (columns × rows, as CT-RATE's XYSpacing orders them), e.g.
    ``"[0, 0, 600, 10] is outside the 512×512 slice"``; callers prefix file, line and field.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return f"{list(box)} is empty (need x0 < x1 and y0 < y1)"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"{list(box)} is outside the {width}×{height} slice"
    return None


def is_box_list(boxes: object) -> bool:
    """Whether ``boxes`` is a non-empty JSON list of ``[x0, y0, x1, y1]`` integer boxes with x0 < x1, y0 < y1 and
    no negative coordinate (the reader's check, before the slice's size is known)."""
    return (
        isinstance(boxes, list)
        and bool(boxes)
        and all(
            isinstance(b, list)
            and len(b) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in b)
            and b[0] < b[2]
            and b[1] < b[3]
            and min(b) >= 0
            for b in boxes
        )
    )
