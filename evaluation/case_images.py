"""The cases an evaluation report shows: a fixed-seed sample of right and wrong answers per question type, each
with the image the model was given, written once as a small PNG under ``<run>/cases/`` and linked from the
report (Markdown and HTML) by a relative path."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from common.files import atomic_path
from evaluation.formatting import qtype_key

CASES_DIR = "cases"
# A prediction row → the image its question was asked with (None when it cannot be rendered any more).
Renderer = Callable[[Mapping[str, Any]], Image.Image | None]


def pick_cases(predictions: Sequence[Mapping[str, Any]], per_type: int = 2, seed: int = 0) -> list[Mapping[str, Any]]:
    """Up to ``per_type`` wrong and ``per_type`` right predictions of each question type, drawn with ``seed``.

    The same predictions and seed give the same cases (``random.Random``, question types in report order), so a
    re-run of an evaluation shows the same questions. Returned grouped by question type, wrong first, each group
    in the predictions' (dataset) order.
    """
    rng = random.Random(seed)
    position = {id(p): i for i, p in enumerate(predictions)}
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for p in predictions:
        by_type.setdefault(str(p.get("question_type")), []).append(p)
    picked: list[Mapping[str, Any]] = []
    for qtype in sorted(by_type, key=qtype_key):
        for correct in (False, True):
            pool = [p for p in by_type[qtype] if bool(p.get("correct")) == correct]
            picked += sorted(rng.sample(pool, min(per_type, len(pool))), key=lambda p: position[id(p)])
    return picked


def case_path(case_id: str) -> str:
    """``cases/<id>.png``, relative to the run folder; characters other than letters, digits, ``.``, ``_`` and
    ``-`` in the id become ``_`` so any id is one safe file name."""
    return f"{CASES_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', case_id)}.png"


def write_case_images(
    run_dir: str | Path, cases: Sequence[Mapping[str, Any]], render: Renderer | None
) -> dict[str, str]:
    """Render each case's image into ``run_dir/cases/<id>.png``; returns ``{case id: path relative to run_dir}``.

    Each PNG is written atomically (``common.files.atomic_path``) at the size the processor was given it (e.g.
    112×112 for the embedded default, a few kB; 448×448 about 100 kB). PNGs of an earlier run of this folder
    that no case links to any more are removed, so the folder holds exactly the linked images. Cases whose
    image ``render`` returns None for are left out of the mapping (the report then says so).
    """
    run_dir = Path(run_dir)
    written: dict[str, str] = {}
    for case in cases if render is not None else ():
        image = render(case)
        if image is None:
            continue
        rel = case_path(str(case["id"]))
        with atomic_path(run_dir / rel) as tmp:
            image.save(tmp, format="PNG", optimize=True)
        written[str(case["id"])] = rel
    keep = {run_dir / rel for rel in written.values()}
    for stale in (run_dir / CASES_DIR).glob("*.png"):
        if stale not in keep:
            stale.unlink()
    return written
