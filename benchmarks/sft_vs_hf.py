"""Our SFT (SFTModule under a Lightning Trainer) against the Hugging Face ``transformers.Trainer``, side by side.

Both sides train the same embedded tiny Qwen2.5-VL on the same CT-VQA samples (our ``CTVQADataset``), batched by
the same ``VQACollator`` in the same order, with the same batch size, AdamW, learning-rate schedule, gradient
clipping, dataloader workers, torch threads and fp32 on CPU; neither validates, checkpoints or writes logs (our
module's per-step ``self.log`` calls stay: they are part of our step). Hugging Face's side gets the collator's batch
minus the fields its model does not take (``meta`` and the prompt-only view used for generation),
so its model computes the same answer-only cross-entropy from ``labels``. Each side runs in its own fresh process
(``common.measure``); a fixed number of optimizer steps is timed after a few untimed warm-up steps.

    python benchmarks/sft_vs_hf.py [--batch-size 8] [--steps 20] [--warmup 3] [--rounds 3] [--num-workers 0]
                                   [--image-size 112] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The repository root first: `common` is our package there, and benchmarks/common.py is imported by its full name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

# Settings both sides share (the CLI adds batch size, steps, workers, image size and threads).
LEARNING_RATE = 1e-3
LR_WARMUP_STEPS = 0  # with no warmup both schedules are the same cosine decay, to the same minimum
MIN_LR_RATIO = 0.1
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0
SEED = 0
# Generation-only fields of our batch: the model's forward does not take them.
NOT_MODEL_INPUTS = ("meta", "prompt_input_ids", "prompt_attention_mask", "prompt_mm_token_type_ids")


def datamodule(model_dir: str, data_dir: str, batch_size: int, num_workers: int, image_size: int) -> Any:
    """The data module users train with (configs/sft.yaml's image settings), in a fixed order.

    No shuffling on either side (``shuffle: false`` here, ``train_sampling_strategy="sequential"`` there), so
    both see the same batches; every training record is kept (``val_fraction: 0``) and nothing is validated.
    """
    return common.bench_datamodule(
        model_dir,
        data_dir,
        batch_size,
        image_size=image_size,
        val_fraction=0.0,
        shuffle=False,
        num_workers=num_workers,
        seed=SEED,
    )


class HFCollator:
    """Our ``VQACollator``, minus the batch fields the Hugging Face model's forward does not take."""

    def __init__(self, pad_token_id: int) -> None:
        from datamodules.collate import VQACollator

        self.collate = VQACollator(pad_token_id=pad_token_id)

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        batch = self.collate(samples)
        for key in NOT_MODEL_INPUTS:
            batch.pop(key, None)
        return batch


def hf_arguments(
    out_dir: str,
    batch_size: int,
    max_steps: int,
    num_workers: int,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> Any:
    """``TrainingArguments`` equal to our SFT settings, with evaluation, saving and logging off."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out_dir,
        **common.hf_device_arguments(accelerator, precision),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        max_steps=max_steps,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        optim="adamw_torch",  # torch.optim.AdamW with its defaults, as ours (the default here would be fused)
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATIO},
        warmup_steps=LR_WARMUP_STEPS,
        max_grad_norm=MAX_GRAD_NORM,
        train_sampling_strategy="sequential",
        dataloader_num_workers=num_workers,
        dataloader_persistent_workers=num_workers > 0,
        dataloader_pin_memory=False,  # our loader does not pin (Lightning moves the batch to the GPU)
        remove_unused_columns=False,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
    )


def param_norm(model: Any) -> float:
    """L2 norm of all parameters: equal on both sides after training when both trained the same way."""
    return sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()) ** 0.5


def result(ends: list[float], steps: int, batch_size: int, model: Any) -> dict[str, Any]:
    """Throughput of the timed steps from the end times of the last warm-up step and of every timed step."""
    import statistics

    if len(ends) != steps + 1:
        raise RuntimeError(f"timed {len(ends) - 1} steps instead of {steps}")
    seconds = ends[-1] - ends[0]
    step_seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return {
        "timed_steps": steps,
        "seconds": seconds,
        "samples_per_s": steps * batch_size / seconds,
        "s_per_step": seconds / steps,
        # The machine may be shared: the median step is the figure least moved by another process's bursts.
        "median_s_per_step": statistics.median(step_seconds),
        "step_seconds": step_seconds,
        "param_norm": param_norm(model),
    }


def run_ours(
    model_dir: str,
    data_dir: str,
    batch_size: int,
    steps: int,
    warmup: int,
    num_workers: int,
    image_size: int,
    threads: int,
    accelerator: str,
    precision: str,
    sdpa_backends: list[str] | None = None,
) -> dict[str, Any]:
    """SFTModule + CTVQADataModule under a real Lightning Trainer; times steps warmup+1 … warmup+steps."""
    import lightning as L

    from lightning_modules.sft import SFTModule

    baseline, backends = common.side_setup(threads, sdpa_backends)

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            # After the optimizer step (global_step counts it): a window spans whole steps, data loading included.
            if trainer.global_step >= warmup:
                self.ends.append(time.perf_counter())

    L.seed_everything(SEED, verbose=False)
    module = SFTModule(
        model_path=model_dir,
        build_embedded_if_missing=False,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=LR_WARMUP_STEPS,
        min_lr_ratio=MIN_LR_RATIO,
        sdpa_backends=list(backends),
    )
    timer = Timer()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = common.bench_trainer(
            warmup + steps,
            [timer],
            accelerator=accelerator,
            precision=precision,
            gradient_clip_val=MAX_GRAD_NORM,
            default_root_dir=out_dir,
        )
        trainer.fit(module, datamodule=datamodule(model_dir, data_dir, batch_size, num_workers, image_size))
    return {**result(timer.ends, steps, batch_size, module.model), "baseline_rss_mib": baseline}


def run_hf(
    model_dir: str,
    data_dir: str,
    batch_size: int,
    steps: int,
    warmup: int,
    num_workers: int,
    image_size: int,
    threads: int,
    accelerator: str,
    precision: str,
    sdpa_backends: list[str] | None = None,
) -> dict[str, Any]:
    """``transformers.Trainer`` on the same model, samples and collator; times the same steps."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Trainer, TrainerCallback

    baseline, _ = common.side_setup(threads, sdpa_backends)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= warmup:
                self.ends.append(time.perf_counter())

    data = datamodule(model_dir, data_dir, batch_size, num_workers, image_size)
    data.setup("fit")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype="float32", attn_implementation="sdpa")
    timer = Timer()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(
            model=model,
            args=hf_arguments(out_dir, batch_size, warmup + steps, num_workers, accelerator, precision),
            train_dataset=data.datasets["train"],
            data_collator=HFCollator(data.processor.tokenizer.pad_token_id),
            callbacks=[timer],
        )
        trainer.train()
    return {**result(timer.ends, steps, batch_size, model), "baseline_rss_mib": baseline}


def median_over_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's numbers as the median over rounds (the parameter norm is the same in every round)."""
    import statistics

    keys = ("samples_per_s", "s_per_step", "median_s_per_step", "peak_rss_mib", "rss_above_imports_mib", "peak_gpu_mib")
    return {**results[0], **{k: statistics.median(r[k] for r in results) for k in keys}}


def check_same_loss(model_dir: str, data_dir: str, batch_size: int, image_size: int) -> dict[str, Any]:
    """Both sides' loss and gradients on the first batch they train on, from the same initial weights."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Trainer

    from datamodules.collate import VQACollator
    from lightning_modules.sft import SFTModule

    data = datamodule(model_dir, data_dir, batch_size, 0, image_size)
    data.setup("fit")
    dataset = data.datasets["train"]
    samples = [dataset[i] for i in range(batch_size)]
    pad_id = data.processor.tokenizer.pad_token_id

    ours = SFTModule(model_path=model_dir, build_embedded_if_missing=False)
    ours.configure_model()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype="float32", attn_implementation="sdpa")
    theirs = model.state_dict()
    same_weights = all(torch.equal(v, theirs[k]) for k, v in ours.model.state_dict().items())

    our_loss, _ = ours._loss(VQACollator(pad_token_id=pad_id)(samples))
    our_loss.backward()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(model=model, args=hf_arguments(out_dir, batch_size, 1, 0))
        inputs = HFCollator(pad_id)(samples)
        # What Trainer.training_step passes: the batch's supervised (shifted) label count.
        n_items = inputs["labels"][:, 1:].ne(-100).sum()
        hf_loss = trainer.compute_loss(model, inputs, num_items_in_batch=n_items)
    hf_loss.backward()
    grad_diff = max(
        float((a.grad - b.grad).abs().max())
        for a, b in zip(ours.model.parameters(), model.parameters(), strict=True)
        if a.grad is not None
    )
    return {
        "same_initial_weights": same_weights,
        "ours_loss": our_loss.item(),
        "hf_loss": hf_loss.item(),
        "loss_abs_diff": abs(our_loss.item() - hf_loss.item()),
        "grad_max_abs_diff": grad_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before them (at least 1)")
    parser.add_argument("--num-workers", type=int, default=0, help="dataloader worker processes (both sides)")
    parser.add_argument("--image-size", type=int, default=112, help="longest image side, pixels")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in each side's process; 1 keeps timings stable on a shared machine, where 2 threads on "
        "2 busy cores stall at every parallel region (steps 5-50x slower, at random)",
    )
    common.add_device_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each side, alternating (median)")
    parser.add_argument("--out", default="runs/bench/sft_vs_hf.json")
    common.add_sdpa_argument(parser)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the timing starts at the end of a warm-up step)")

    model_dir, data_dir = (str(p) for p in common.prepare())
    shared = dict(model_dir=model_dir, data_dir=data_dir, batch_size=args.batch_size, image_size=args.image_size)
    check = common.measure(check_same_loss, **shared)
    run = dict(
        shared,
        steps=args.steps,
        warmup=args.warmup,
        num_workers=args.num_workers,
        threads=args.threads,
        accelerator=args.accelerator,
        precision=args.precision,
        sdpa_backends=args.sdpa_backends,
    )
    # Rounds alternate which side goes first, and the table takes each side's median over rounds: on a shared
    # machine a burst of another process's work slows whichever side is running, a few steps at a time.
    rounds = []
    for r in range(args.rounds):
        sides = [("ours", run_ours), ("hf", run_hf)]
        rounds.append({name: common.measure(fn, **run) for name, fn in (sides if r % 2 == 0 else sides[::-1])})
    ours, hf = (median_over_rounds([r[side] for r in rounds]) for side in ("ours", "hf"))
    round_ratios = [r["ours"]["samples_per_s"] / r["hf"]["samples_per_s"] for r in rounds]

    settings = [
        ("model", "embedded tiny Qwen2.5-VL, fp32, sdpa", "same"),
        ("data", "CTVQADataset (lung window, inset zoom), no shuffle", "same dataset, sequential sampler"),
        ("collator", "VQACollator", "VQACollator minus meta / prompt_* fields"),
        ("loss", "SFTModule._loss: answer-only CE", "model(labels=…) CE over num_items_in_batch"),
        ("batch size", args.batch_size, args.batch_size),
        ("optimizer", f"torch AdamW, lr {LEARNING_RATE}, wd {WEIGHT_DECAY}", "optim=adamw_torch, same lr / wd"),
        ("lr schedule", f"warmup_cosine, warmup {LR_WARMUP_STEPS}, min ×{MIN_LR_RATIO}", "cosine_with_min_lr, same"),
        ("grad clipping (norm)", MAX_GRAD_NORM, MAX_GRAD_NORM),
        ("dataloader workers", args.num_workers, args.num_workers),
        (
            "precision / device / torch threads",
            f"{args.precision}, {args.accelerator}, {args.threads}",
            ", ".join(f"{k}={v}" for k, v in common.hf_device_arguments(args.accelerator, args.precision).items())
            + f", {args.threads}",
        ),
        ("SDPA kernels (GPU)", *[", ".join(args.sdpa_backends)] * 2),
        ("eval / checkpoints / logging", "off / off / logger=False", "no / no / no"),
        ("steps: warm-up + timed", f"{args.warmup} + {args.steps}", f"{args.warmup} + {args.steps}"),
    ]
    print(common.table("Settings", ["setting", "ours (Lightning)", "Hugging Face Trainer"], settings))
    print(
        f"First batch, same initial weights: {check['same_initial_weights']}; loss ours {check['ours_loss']:.6f}, "
        f"HF {check['hf_loss']:.6f} (|diff| {check['loss_abs_diff']:.1e}); "
        f"largest gradient difference {check['grad_max_abs_diff']:.1e}\n"
    )
    memory = common.memory_metrics(args.accelerator)
    speed = ("samples_per_s", "s_per_step", "median_s_per_step")
    rows = [
        ("ours (Lightning SFTModule)", *(ours[k] for k in speed), *(round(ours[k]) for _, k in memory)),
        ("HF transformers.Trainer", *(hf[k] for k in speed), *(round(hf[k]) for _, k in memory)),
        ("ours / HF", *(ours[k] / hf[k] for k in (*speed, *(k for _, k in memory)))),
    ]
    title = (
        f"SFT, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, median of {args.rounds} round(s)"
    )
    header = ["side", "samples/s", "s/step", "median s/step", *(name for name, _ in memory)]
    print(common.table(title, header, rows))
    print("ours / HF samples/s in each round: " + ", ".join(f"{x:.3f}" for x in round_ratios))
    print(
        f"Parameter L2 norm after training (equal when both trained alike): ours {ours['param_norm']:.6f}, "
        f"HF {hf['param_norm']:.6f}"
    )
    print(common.machine())
    common.save(
        {
            "settings": vars(args),
            "loss_check": check,
            "ours": ours,
            "hf": hf,
            "rounds": rounds,
            "round_ratios": round_ratios,
            "machine": common.machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
