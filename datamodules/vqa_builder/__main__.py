"""Build CT-RATE-VQA JSONL (one file per split) from CT-RATE + ReXGroundingCT, real or synthetic alike.

    python -m datamodules.vqa_builder --root data/synthetic-ctrate --seed 0
    python -m datamodules.vqa_builder --root data/synthetic-ctrate --out data/synthetic-ctrate/vqa-anatomy \
        --roi_source datamodules.roi_sources.AnatomyROI

Prints the number of questions per split and type, then the files written.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from datamodules.roi_sources import ROISource
from datamodules.views import ViewSpec
from datamodules.vqa_builder.build import build_vqa


def summarize(paths: Mapping[str, Path]) -> str:
    """Small table: questions per split and type, and presence yes/no."""
    counts: dict[str, Counter] = {}
    for split, path in paths.items():
        recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        counts[split] = Counter(r["question_type"] for r in recs)
        counts[split].update(f"presence:{r['answer']}" for r in recs if r["question_type"] == "presence")
    rows = ["presence", "presence:yes", "presence:no", "abnormality", "location", "size", "count"]
    lines = [f"{'question type':<14}" + "".join(f"{s:>8}" for s in counts)]
    lines += [f"{row:<14}" + "".join(f"{c[row]:>8}" for c in counts.values()) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: build the VQA files (``build_vqa``), print the summary table and the paths."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m datamodules.vqa_builder", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="config")
    parser.add_argument("--root", type=Path, required=True, help="folder holding dataset/ (and rexgroundingct/)")
    parser.add_argument("--out", type=Path | None, default=None, help="output folder (default ROOT/vqa)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--roi_source", type=ROISource | None, default=None, help="where boxes come from (MaskROI)")
    parser.add_argument("--views", type=ViewSpec | None, default=None, help="candidate views per question (one slice)")
    args = parser.instantiate(parser.parse_args(argv))
    paths = build_vqa(args.root, args.out, args.seed, args.roi_source, args.views)
    print(summarize(paths))
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
