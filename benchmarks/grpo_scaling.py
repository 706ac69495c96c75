"""How our GRPO step time grows with the group size G and the completion length.

    python benchmarks/grpo_scaling.py                       # G ∈ {2, 4, 8, 16} × length ∈ {32, 64, 128}
    python benchmarks/grpo_scaling.py --quick               # G ∈ {2, 8} × length ∈ {32, 64}, 1 step per cell
    python benchmarks/grpo_scaling.py --groups 4 8 --lengths 64 --steps 3

Each cell is a real ``GRPOModule`` fit through a Lightning ``Trainer`` on the embedded tiny Qwen2.5-VL (untrained,
so it rarely emits its end token and completions run to their budget: the mean length is reported), with
configs/grpo.yaml's settings (beta 0.04 with a frozen reference, dapo, micro-batches of 32 completions) and the
same ``--prompts`` prompts in every step of every cell. All cells run in one process, each fit with a warm-up step
left out. A subclass times ``rollout`` (sampling), ``rl.logprobs.fixed_logps`` (the reference's log-probs) and
``grpo_step`` (policy forward + backward + optimizer step) without changing them; forward hooks on the policy split
the rollout into its one prefill and its decode steps.

Why the numbers have the shape they have (4 prompts of 137 tokens, 16 of them the image; the second printed table
splits every step, see benchmarks/README.md for a recorded run):

- Rollout = one prefill + one decode forward per new token (+ sampling and text decoding), and it is most of every
  step (45-70 %). The prefill runs once per prompt whatever G (``rl/sampling.py`` computes the prompt's KV cache once
  and repeats it G times): about 0.02-0.03 s in every cell. Each decode step is one forward of all P·G rows at
  once: a fixed cost of about 3 ms (four layers of small kernels, Python) plus a small cost per row (3-4 ms a step
  at 8 rows, 9-11 ms at 64). So doubling G adds far less than double. Decode time is linear in the length: one
  step per token, and the per-step cost hardly grows with the cache, since attention over at most 137 + 128 cached
  tokens is small next to the fixed cost at this size (on a large model, attention over the cache adds a term that
  grows with the length squared).
- Reference log-probs (no grad) and update (policy forward + backward + AdamW) run each prompt and its image once
  per group (``grouped_forward.grouped_completion_logits``) and then the P·G completions over that prompt's KV cache: a
  per-prompt cost that does not grow with G, plus a cost linear in the completion tokens P·G·L (the log-softmax,
  entropy and loss over every completion position and their backward). Both grow sublinearly in G (about ×4-5
  from G = 2 to 16) and about linearly in the length.
- Step time therefore grows sublinearly in G (about ×3-3.5 from G = 2 to 16) and about linearly in the length from
  64 tokens on; completions per second rise with G, because the fixed cost of each forward is shared by more rows,
  and fall with the length. The untrained model runs to the budget: mean completion length 120-125 of 128 (85-100 %
  truncated at every length).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    add_device_arguments,
    bench_datamodule,
    bench_grpo_module,
    bench_trainer,
    machine,
    peak_gpu_mib,
    peak_rss_mib,
    prepare,
    save,
    table,
)

# What the subclass times: method of GRPOModule -> part of the step (and ``fixed_logps``: the reference).
PARTS = {"rollout": "rollout", "grpo_step": "update"}


def now() -> float:
    """Wall time once the GPU's queued work is done (CUDA kernels run asynchronously to Python)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def timed_module_class() -> type:
    """A GRPOModule whose rollout, reference log-probs and update add their wall time to ``self.bench``."""
    import lightning_modules.grpo as grpo
    from lightning_modules.grpo import GRPOModule

    def wrap(name: str, part: str) -> Any:
        original = getattr(GRPOModule, name)

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            hooks = self._decode_hooks() if part == "rollout" else []
            start = now()
            try:
                out = original(self, *args, **kwargs)
            finally:
                for hook in hooks:
                    hook.remove()
            self.bench[part] += now() - start
            if part == "rollout":
                rollout = out[0]
                self.bench["completion_tokens"] += float(rollout.completion_mask.sum())
                self.bench["completions"] += rollout.completion_mask.size(0)
                self.bench["truncated"] += float(rollout.is_truncated.sum())
            return out

        return timed

    class TimedGRPO(GRPOModule):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.bench: dict[str, float] = defaultdict(float)

        def _decode_hooks(self) -> list[Any]:
            """Forward hooks splitting a rollout into its prefill (the call with pixels) and its decode steps."""
            clock: list[float] = []

            def before(_module: Any, _args: Any, _kwargs: Any) -> None:
                clock.append(now())

            def after(_module: Any, _args: Any, kwargs: Any, _out: Any) -> None:
                part = "prefill" if kwargs.get("pixel_values") is not None else "decode"
                self.bench[part] += now() - clock.pop()
                self.bench[f"{part}_forwards"] += 1

            return [
                self.model.register_forward_pre_hook(before, with_kwargs=True),
                self.model.register_forward_hook(after, with_kwargs=True),
            ]

        def generate_trajectory(self, *args: Any, **kwargs: Any) -> Any:
            """Times the fixed log-probs (μ = 1: the reference's), a function the trajectory step calls."""
            original = grpo.fixed_logps

            def timed(*inner: Any, **named: Any) -> Any:
                start = now()
                try:
                    return original(*inner, **named)
                finally:
                    self.bench["reference"] += now() - start

            grpo.fixed_logps = timed
            try:
                return super().generate_trajectory(*args, **kwargs)
            finally:
                grpo.fixed_logps = original

    for name, part in PARTS.items():
        if hasattr(GRPOModule, name):  # another name after a refactor: that part is left in "other"
            setattr(TimedGRPO, name, wrap(name, part))
    return TimedGRPO


def run_cell(
    data_dir: Path,
    model_dir: Path,
    num_generations: int,
    length: int,
    prompts: int,
    steps: int,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> dict[str, float]:
    """One GRPO fit of 1 warm-up + ``steps`` steps; per-step means of the measured steps."""
    import lightning as L

    class StepClock(L.Callback):
        """Wall time of each training step; resets the module's part timers after the warm-up step."""

        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer: L.Trainer, module: Any, *_: Any) -> None:
            if trainer.global_step == 1:
                module.bench.clear()
            self.start = now()

        def on_train_batch_end(self, trainer: L.Trainer, module: Any, *_: Any) -> None:
            self.seconds.append(now() - self.start)

    L.seed_everything(0, verbose=False)
    # every cell sees the same prompts in the same order
    dm = bench_datamodule(model_dir, data_dir, prompts, shuffle=False)
    module = bench_grpo_module(model_dir, num_generations, length, timed_module_class())
    clock = StepClock()
    trainer = bench_trainer(1 + steps, [clock], accelerator=accelerator, precision=precision)
    trainer.fit(module, dm)
    bench, seconds = module.bench, clock.seconds[1:]
    step_s = statistics.mean(seconds)
    parts = {part: bench[part] / steps for part in ("rollout", "reference", "update", "prefill", "decode")}
    return {
        "num_generations": num_generations,
        "length": length,
        "step_s": step_s,
        "step_s_each": seconds,
        **{f"{part}_s": value for part, value in parts.items()},
        "other_s": step_s - parts["rollout"] - parts["reference"] - parts["update"],
        "decode_step_ms": bench["decode"] / max(bench["decode_forwards"], 1) * 1e3,
        "completions_per_s": prompts * num_generations / step_s,
        "mean_completion_length": bench["completion_tokens"] / max(bench["completions"], 1),
        "truncated_fraction": bench["truncated"] / max(bench["completions"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8, 16], help="group sizes G")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128], help="max_new_tokens")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (batch_size)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per cell, after one warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="G 2, 8 × length 32, 64, one measured step")
    add_device_arguments(parser)
    parser.add_argument("--out", default="runs/bench/grpo_scaling.json")
    args = parser.parse_args()
    if args.quick:
        args.groups, args.lengths, args.steps = [2, 8], [32, 64], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, data_dir = prepare()
    print(f"{machine()}; {torch.get_num_threads()} intra-op threads")

    start = time.perf_counter()
    cells = {}
    for g in args.groups:
        for length in args.lengths:
            cells[g, length] = run_cell(
                data_dir, model_dir, g, length, args.prompts, args.steps, args.accelerator, args.precision
            )
            c = cells[g, length]
            print(
                f"G={g:<3} length={length:<4} {c['step_s']:.2f} s/step  rollout {c['rollout_s']:.2f}  "
                f"update {c['update_s']:.2f}  mean length {c['mean_completion_length']:.1f}",
                flush=True,
            )
    elapsed = time.perf_counter() - start

    header = ["G", *[f"length {n}" for n in args.lengths]]
    rows = [
        [g, *[f"{cells[g, n]['step_s']:.2f} s ({cells[g, n]['completions_per_s']:.1f}/s)" for n in args.lengths]]
        for g in args.groups
    ]
    print()
    print(table(f"GRPO seconds per step (completions per second), {args.prompts} prompts per step", header, rows))
    split = [
        [
            g,
            n,
            c["step_s"],
            c["rollout_s"],
            c["prefill_s"],
            c["decode_s"],
            c["decode_step_ms"],
            c["reference_s"],
            c["update_s"],
            c["other_s"],
            c["mean_completion_length"],
            f"{c['truncated_fraction']:.0%}",
        ]
        for (g, n), c in cells.items()
    ]
    print(
        table(
            "Where a step goes (seconds per step)",
            [
                "G",
                "length",
                "step",
                "rollout",
                "prefill",
                "decode",
                "ms/decode step",
                "reference logps",
                "update",
                "other",
                "mean length",
                "truncated",
            ],
            split,
        )
    )
    print(
        "rollout = prefill + decode (+ sampling, text decoding); reference logps = the frozen reference's forward; "
        "update = policy forward + backward + optimizer step; other = rewards, advantages, logging.\n"
    )
    print(__doc__[__doc__.index("Why the numbers") :])
    save(
        {
            "machine": machine(),
            "args": vars(args),
            "elapsed_s": elapsed,
            "peak_rss_mib": peak_rss_mib(),
            "peak_gpu_mib": peak_gpu_mib(),
            "cells": list(cells.values()),
        },
        args.out,
    )
    print(f"{len(cells)} cells in {elapsed:.0f} s; saved {args.out}")


if __name__ == "__main__":
    main()
