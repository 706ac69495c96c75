"""Every tiny offline model by family name: what tests, benchmarks and the comparison table build.

python -m models.tiny.builders --family qwen3_vl --out artifacts/tiny-qwen3-vl
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

from models.embedded import build_embedded_model
from models.tiny import gemma3, idefics3, internvl, llava_onevision, qwen, smolvlm

Builder = Callable[[Path, int], Path]

TINY_BUILDERS: dict[str, Builder] = {
    "qwen2_5_vl": lambda out, seed: build_embedded_model(out, seed=seed),
    **{family: partial(qwen.build, family) for family in qwen.QWEN_FAMILIES},
    # Evaluated only (models/families: the generic adapter).
    "gemma3": lambda out, seed: gemma3.build(out, seed=seed),
    "llava_onevision": lambda out, seed: llava_onevision.build(out, seed=seed),
    "internvl": lambda out, seed: internvl.build(out, seed=seed),
    "idefics3": lambda out, seed: idefics3.build(out, seed=seed),
    "smolvlm": lambda out, seed: smolvlm.build(out, seed=seed),
}
# Families SFT and GRPO are tested on (models/families); the others are evaluated only.
TRAINING_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


def build_tiny(family: str, out: Path, seed: int = 0) -> Path:
    """Write the tiny model of ``family`` to ``out``. Raises KeyError naming the known families."""
    if family not in TINY_BUILDERS:
        raise KeyError(f"no tiny model for family {family!r}; known: {', '.join(sorted(TINY_BUILDERS))}")
    return TINY_BUILDERS[family](Path(out), seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=sorted(TINY_BUILDERS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote tiny {args.family} to {build_tiny(args.family, args.out, args.seed)}")


if __name__ == "__main__":
    main()
