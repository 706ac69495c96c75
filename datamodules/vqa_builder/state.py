"""What a VQA folder was built with (``build.json``) and whether it holds a finished build for a given ROI source."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from datamodules.ctrate import BadSampleError
from datamodules.roi_sources import MaskROI, ROISource
from datamodules.views import ViewSpec

BUILD_INFO = "build.json"


def build_info(
    seed: int, roi_source: ROISource | None, views: ViewSpec | None = None, complete: bool = True
) -> dict[str, Any]:
    """What a VQA folder was built with (``build.json`` beside its JSONL files); ``views`` only when they make
    records other than single slices, so such builds keep the file they always had."""
    source = (roi_source if roi_source is not None else MaskROI()).describe()
    info = {"seed": seed, "roi_source": source, "complete": complete}
    if views is not None and views.active:
        info["views"] = asdict(views)
    return json.loads(json.dumps(info))  # tuples → lists, as read back


def vqa_state(
    vqa_dir: Path, roi_source: ROISource | None, views: ViewSpec | None = None
) -> Literal["built", "missing"]:
    """ "built" when ``vqa_dir`` holds a finished build made with ``roi_source`` and ``views``; "missing" when it
    holds none or an interrupted one. A folder built with another source or other views raises: its images are not
    what the config says."""
    info_path = Path(vqa_dir) / BUILD_INFO
    wanted_info = build_info(0, roi_source, views)
    wanted = wanted_info["roi_source"]
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not info.get("complete", True):  # written last before the flag existed
            return "missing"
        built = info["roi_source"]
        if info.get("views") != wanted_info.get("views"):
            raise BadSampleError(
                f"{info_path}: these VQA files were built with views {info.get('views')}, the config asks for "
                f"{wanted_info.get('views')}; set data.vqa_dir to a folder of its own for these views"
            )
    elif (Path(vqa_dir) / "train.jsonl").is_file():
        built = build_info(0, None)["roi_source"]  # built before build.json existed: always the default source
    else:
        return "missing"
    if built != wanted:
        raise BadSampleError(
            f"{info_path}: these VQA files were built with roi_source {built['class_path']} {built['init_args']}, "
            f"the config asks for {wanted['class_path']} {wanted['init_args']}; set data.vqa_dir to a folder of its "
            "own for this source"
        )
    return "built"
