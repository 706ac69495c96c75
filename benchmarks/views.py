"""What candidate views cost: image tokens per prompt, SFT samples per second and GRPO seconds per step with one
slice per question against K views (slices or thin slabs) per presence/abnormality question, side by side.

    python benchmarks/views.py          # 1 slice, 1 slab, 4 slices, 4 slabs of 10 mm, 56 px (the ablation's)
    python benchmarks/views.py --quick  # one measured step per side

Every side is a real ``SFTModule`` / ``GRPOModule`` fit through a Lightning ``Trainer`` on the embedded tiny
Qwen2.5-VL, on the same synthetic CT-RATE, with the ablation's data settings (configs/experiments/views.yaml: inset
zoom, 56 px images, views 20 mm apart) and the training split's mix of questions (location, size and count
questions keep one slice). Views come from ``AnatomyROI`` (no classifier to train first; the cost depends on K and
the slabs, not on where the views are). Each fit leaves out one warm-up step; all sides run in this one process,
in turn, ``--rounds`` times; a side's time is the median of its pooled step times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    bench_datamodule,
    bench_grpo_module,
    bench_trainer,
    machine,
    prepare,
    save,
    table,
)

SIDES: dict[str, dict[str, Any] | None] = {
    "1 slice": None,
    "1 slab (10 mm)": {"k": 1, "slab_mm": 10.0},
    "4 slices": {"k": 4},
    "4 slabs (10 mm)": {"k": 4, "slab_mm": 10.0},
}


class StepClock:
    """Wall time of each training step (a Lightning callback, built lazily so the module imports stay cheap)."""

    @staticmethod
    def make() -> Any:
        import lightning as L

        class Clock(L.Callback):
            def __init__(self) -> None:
                self.seconds: list[float] = []

            def on_train_batch_start(self, *_: Any) -> None:
                self.start = time.perf_counter()

            def on_train_batch_end(self, *_: Any) -> None:
                self.seconds.append(time.perf_counter() - self.start)

        return Clock()


def side_data(data_dir: Path, model_dir: Path, views: dict[str, Any] | None, batch_size: int) -> Any:
    """The side's data module, its VQA files built once under ``data_dir`` (one folder per side)."""
    from datamodules.roi_sources import AnatomyROI
    from datamodules.views import ViewSpec
    from datamodules.vqa_builder import build_vqa, vqa_state

    if views is None:
        return bench_datamodule(model_dir, data_dir, batch_size, image_size=56)
    spec, source = ViewSpec(**views), AnatomyROI()
    vqa_dir = data_dir / f"vqa-views-{spec.k}-{spec.slab_mm:g}"
    if vqa_state(vqa_dir, source, spec) != "built":
        build_vqa(data_dir, vqa_dir, seed=0, roi_source=source, views=spec)
    return bench_datamodule(
        model_dir, data_dir, batch_size, image_size=56, vqa_dir=str(vqa_dir), roi_source=source, views=spec
    )


def image_tokens(dm: Any) -> tuple[float, int]:
    """Mean and maximum image tokens per prompt over the side's first 64 training samples."""
    dm.setup("fit")
    ds = dm.datasets["train"]
    tokens = [ds[i]["meta"]["image_tokens"] for i in range(min(64, len(ds)))]
    return statistics.mean(tokens), max(tokens)


def sft_side(data_dir: Path, model_dir: Path, views: dict[str, Any] | None, steps: int, batch: int) -> list[float]:
    """Seconds of each measured SFT step."""
    import lightning as L

    from lightning_modules.sft import SFTModule

    L.seed_everything(0, verbose=False)
    dm = side_data(data_dir, model_dir, views, batch)
    clock = StepClock.make()
    bench_trainer(1 + steps, [clock]).fit(SFTModule(model_path=str(model_dir), warmup_steps=0), dm)
    return clock.seconds[1:]


def grpo_side(data_dir: Path, model_dir: Path, views: dict[str, Any] | None, steps: int, prompts: int,
              generations: int, length: int) -> list[float]:  # fmt: skip
    """Seconds of each measured GRPO step."""
    import lightning as L

    L.seed_everything(0, verbose=False)
    dm = side_data(data_dir, model_dir, views, prompts)
    module = bench_grpo_module(model_dir, generations, length)
    clock = StepClock.make()
    bench_trainer(1 + steps, [clock]).fit(module, dm)
    return clock.seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per fit, after one warm-up step")
    parser.add_argument("--batch-size", type=int, default=8, help="SFT samples per step")
    parser.add_argument("--prompts", type=int, default=4, help="GRPO prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt (G)")
    parser.add_argument("--length", type=int, default=32, help="GRPO max_new_tokens")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all sides (steps pooled, median)")
    parser.add_argument("--quick", action="store_true", help="one round of one measured step per fit")
    parser.add_argument("--out", default="runs/bench/views.json")
    args = parser.parse_args()
    steps, rounds = (1, 1) if args.quick else (args.steps, args.rounds)
    model_dir, data_dir = prepare()
    print(f"{machine()}; {torch.get_num_threads()} intra-op threads")
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name, views in SIDES.items():  # a side's prompts are the same every round: their tokens are counted once
        mean_tokens, max_tokens = image_tokens(side_data(data_dir, model_dir, views, args.batch_size))
        results[name] = {"views": views or {}, "image_tokens": mean_tokens, "image_tokens_max": max_tokens,
                         "sft_steps_s": [], "grpo_steps_s": []}  # fmt: skip
    # Sides take turns within each round, so a slower stretch of the shared machine falls on all of them.
    for _ in range(rounds):
        for name, views in SIDES.items():
            results[name]["sft_steps_s"] += sft_side(data_dir, model_dir, views, steps, args.batch_size)
            results[name]["grpo_steps_s"] += grpo_side(
                data_dir, model_dir, views, steps, args.prompts, args.generations, args.length
            )
    for name, r in results.items():
        r["sft_step_s"] = statistics.median(r["sft_steps_s"])
        r["sft_samples_per_s"] = args.batch_size / r["sft_step_s"]
        r["grpo_step_s"] = statistics.median(r["grpo_steps_s"])
        print(name, {k: round(v, 3) for k, v in r.items() if isinstance(v, float)}, flush=True)
    # The GRPO step-time and SFT throughput ratios experiments/views_report.py checks the views ablation against.
    base = results["1 slice"]
    rows = [
        [
            name,
            f"{r['image_tokens']:.1f} (max {r['image_tokens_max']})",
            f"{r['image_tokens'] / base['image_tokens']:.2f}×",
            f"{r['sft_samples_per_s']:.1f}",
            f"{r['sft_samples_per_s'] / base['sft_samples_per_s']:.2f}×",
            f"{r['grpo_step_s']:.2f}",
            f"{r['grpo_step_s'] / base['grpo_step_s']:.2f}×",
        ]
        for name, r in results.items()
    ]
    header = ["views", "image tokens / prompt", "ratio", "SFT samples/s", "ratio", "GRPO s/step", "ratio"]
    title = (
        f"Candidate views, 56 px, SFT batch {args.batch_size}, GRPO {args.prompts} prompts × G {args.generations} × "
        f"{args.length} tokens, median of {rounds} × {steps} measured steps each"
    )
    print()
    print(table(title, header, rows))
    print(f"total {time.perf_counter() - start:.0f} s")
    save({"machine": machine(), "settings": vars(args), "results": results}, args.out)


if __name__ == "__main__":
    main()
