"""GRPO throughput: our ``GRPOModule`` under a Lightning ``Trainer`` against TRL's ``GRPOTrainer``, side by side.

    pip install -r benchmarks/requirements.txt   # trl, datasets
    python benchmarks/grpo_vs_trl.py [--generations 8 --max-new-tokens 64 --prompts-per-step 4 --steps 5 --lora]
    python benchmarks/grpo_vs_trl.py --family qwen3_5   # another training family's tiny model

Both sides train the same model: the embedded tiny Qwen2.5-VL (``common.prepare()``), or with ``--family`` the tiny
model of that training family (``models.tiny.builders``, built once under ``--workdir``), on the same CT-VQA train
prompts, in the same order, with the same zoom-embedded images: rendered once by our ``CTVQADataset`` (with that
model's processor) and handed to TRL as PIL images in a ``datasets.Dataset`` with a conversational ``prompt`` (the
benchmark checks that TRL's processor gives the same prompt token ids as ours). Per optimizer step each side does
one rollout of prompts-per-step × G completions, scores them with the same rewards (accuracy, format, validity;
weights 1, 0.5, 0.5), runs one reference forward (beta > 0) and one policy forward/backward over the whole rollout,
and takes one AdamW step (num_iterations = 1, so neither side recomputes the rollout policy's log-probs). fp32 on
CPU by default (``--accelerator gpu --precision bf16-mixed`` on a GPU: bf16 autocast over fp32 weights on both
sides), one process each (``common.measure``), timed over ``--steps`` optimizer steps after ``--warmup`` steps, data
loading included.

Completions are forced to full length on both sides (the end tokens are suppressed while sampling, next to the
special tokens our sampler never emits, which TRL gets as ``generation_kwargs["suppress_tokens"]``), so both
decode exactly prompts × G × max-new-tokens tokens and completions/s compares equal work; ``--natural-length``
lets completions end, and then completion tokens/s is the fairer number.

Each side runs ``--threads`` torch threads (default 1: on a shared 2-core machine, two OpenMP threads stall
whenever another process holds a core, and both sides' times swing by 5-10×). Gradient checkpointing is off on
both sides (TRL's default is on; ``--gradient-checkpointing`` turns it on for both: our checkpointed layers still
share each prompt's KV cache among its G completions, through ``models.cache_layers.ReplaySafeLayer``).

What is not like-for-like (by design of each library):
- images: our data path renders each slice from its CT volume every step (NIfTI cache, windowing, zoom, resize,
  processor); TRL reads the pre-rendered PNG from the dataset and runs its processor twice (generation, forward).
- structure: we prefill each prompt once and decode its G completions from that cache, and our log-prob forwards
  (policy, reference) also run each prompt and image once per group; TRL runs G copies of every prompt and image
  through ``generate`` and each forward. That is the difference being measured.
- sampling: the same distribution (temperature, top-p, top-k, suppressed tokens) but different random streams.
- TRL projects the LM head in tiles (its fused head) and never materialises the logits; we do, unless
  ``--logprob-chunk-size`` (``GRPOModule(logprob_chunk_size=…)``) makes them a chunk at a time.
- logging: ours logs its per-step metrics through ``self.log`` (no logger attached); TRL keeps its metrics in
  memory (``logging_steps`` beyond the run). Neither prints completions, validates or checkpoints.
- peak RSS is each whole process: Lightning, MONAI and our data module on one side, TRL, datasets and accelerate
  on the other, besides the model, optimizer and activations; "above post-import" subtracts what each side held
  after its imports, which is most of the whole on the tiny model.

Both sides allow the same SDPA kernels (``--sdpa-backends``, default ours: flash, efficient, math; torch's
process-wide switches, set in each side's process).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

# The repository root first: its package ``common`` (and every other) over this folder's files.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

DEFAULT_FAMILY = "qwen2_5_vl"  # the embedded model, or a wider/deeper one with --hidden-size / --num-layers

REWARD_WEIGHTS = [1.0, 0.5, 0.5]
LEARNING_RATE = 2e-5
EPSILON, EPSILON_HIGH = 0.2, 0.28
LOSS_TYPE = "dapo"
SEED = 0
# LoRA (--lora) on both sides: the language model's projections, as our LoRASpec targets them. No dropout, so
# TRL's default of keeping dropout and ours agree.
LORA = dict(r=16, alpha=32, dropout=0.0)


def _datamodule(model_dir: Path, data_dir: Path, prompts: int, prompts_per_step: int) -> Any:
    # The first `prompts` training questions in file order (no shuffle): TRL gets exactly these, in this order.
    return common.bench_datamodule(model_dir, data_dir, prompts_per_step, max_samples=prompts, shuffle=False, seed=SEED)


def render_prompts(model_dir: Path, data_dir: Path, prompts: int) -> list[dict[str, Any]]:
    """TRL's rows: our train records' chat prompts and exact images, plus the fields the rewards read."""
    from datamodules.prompts import build_messages
    from datamodules.transforms import to_pil

    dm = _datamodule(model_dir, data_dir, prompts, 1)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    rows = []
    for record in dataset.records:
        image = dataset.image(record)
        sample = dataset.encode(record, image)
        rows.append(
            {
                "prompt": build_messages(record["question"], record["options"], dataset.system_prompt),
                "image": to_pil(image),
                "answer": record["answer"],
                "options": list(record["options"]),
                "question_type": record["question_type"],
                "prompt_format": dataset.prompt_format,
                "our_prompt_ids": sample["prompt_ids"].tolist(),
            }
        )
    return rows


def _summary(times: list[float], lengths: list[float], completions_per_step: int, warmup: int) -> dict[str, Any]:
    """Throughput over the steps after ``warmup``; ``times`` are the wall-clock ends of each step."""
    timed = len(times) - warmup
    seconds = times[-1] - times[warmup - 1] if warmup else times[-1] - times[0]
    if not warmup:  # without a warm-up step the first step's start is unknown: time the rest
        timed -= 1
    mean_length = sum(lengths[-timed:]) / timed
    return {
        "seconds_per_step": seconds / timed,
        "completions_per_s": completions_per_step * timed / seconds,
        "completion_tokens_per_s": completions_per_step * mean_length * timed / seconds,
        "mean_completion_length": mean_length,
        "timed_steps": timed,
        "step_end_times": times,
        "mean_lengths": lengths,
    }


def run_ours(
    model_dir: str,
    data_dir: str,
    generations: int,
    max_new_tokens: int,
    prompts_per_step: int,
    steps: int,
    warmup: int,
    beta: float,
    lora: bool,
    gradient_checkpointing: bool,
    threads: int,
    accelerator: str,
    precision: str,
    full_length: bool,
    sdpa_backends: list[str] | None,
    cache_implementation: str = "auto",
    logprob_chunk_size: int | None = None,
) -> dict[str, Any]:
    """Our GRPOModule fitted by a Lightning Trainer, as ``cli.py fit`` runs it (no logger, checkpoint or validation)."""
    import lightning as L
    import torch

    from lightning_modules.grpo import GRPOModule
    from models.loading import LoRASpec
    from rewards.accuracy import accuracy_reward
    from rewards.format import format_reward
    from rewards.validity import validity_reward
    from rl.config import GenerationArgs, LoggingArgs, LossArgs, RewardArgs
    from rl.decode_steps import DecodeArgs

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.lengths: list[float] = []

        def on_fit_start(self, trainer: L.Trainer, module: GRPOModule) -> None:
            if full_length:  # after configure_model, which sets the suppressed tokens
                module.suppressed_tokens = sorted(set(module.suppressed_tokens) | set(module.end_tokens))

        def on_train_batch_end(self, trainer: L.Trainer, module: GRPOModule, *args: Any) -> None:
            self.times.append(time.perf_counter())
            self.lengths.append(float(trainer.callback_metrics["train/completions/mean_length"]))

    baseline, backends = common.side_setup(threads, sdpa_backends)
    L.seed_everything(SEED, verbose=False)
    module = GRPOModule(
        model_path=model_dir,
        lora=LoRASpec(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"]) if lora else None,
        learning_rate=LEARNING_RATE,
        warmup_steps=0,
        min_lr_ratio=1.0,
        max_grad_norm=1.0,
        max_new_tokens=max_new_tokens,
        generation=GenerationArgs(num_generations=generations, temperature=1.0, top_p=1.0, top_k=0, sampling_seed=SEED),
        reward_funcs=[accuracy_reward, format_reward, validity_reward],
        rewards=RewardArgs(reward_weights=REWARD_WEIGHTS, scale_rewards="group"),
        loss=LossArgs(
            loss_type=LOSS_TYPE,
            beta=beta,
            epsilon=EPSILON,
            epsilon_high=EPSILON_HIGH,
            num_iterations=1,
            mask_truncated_completions=False,
        ),
        micro_batch_size=None,  # the whole rollout in one forward/backward, as TRL's batch of P × G
        logprob_chunk_size=logprob_chunk_size,
        logging=LoggingArgs(log_completions_every_n_steps=0),
        gradient_checkpointing=gradient_checkpointing,
        sdpa_backends=list(backends),
        decoding=DecodeArgs(cache_implementation=cache_implementation),  # auto: static + CUDA graph on a GPU
    )
    dm = _datamodule(Path(model_dir), Path(data_dir), prompts_per_step * (warmup + steps), prompts_per_step)
    timer = Timer()
    trainer = common.bench_trainer(warmup + steps, [timer], accelerator=accelerator, precision=precision)
    trainer.fit(module, datamodule=dm)
    result = _summary(timer.times, timer.lengths, prompts_per_step * generations, warmup)
    result.update(threads=torch.get_num_threads(), baseline_rss_mib=baseline, sdpa_backends=list(backends))
    return result


def parameter_count(model_dir: Path) -> int:
    """Parameters of the model in ``model_dir`` (tied embeddings counted once)."""
    from models.loading import load_model

    return sum(p.numel() for p in load_model(model_dir).parameters())


def _trl_reward(func: Any) -> Any:
    """One of our rewards with TRL's signature: conversational completions → text, dataset columns as kwargs."""

    def reward(prompts: list, completions: list, **columns: Any) -> list[float | None]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return func(texts, **columns)

    reward.__name__ = func.__name__
    return reward


def run_trl(
    model_dir: str,
    rows: list[dict[str, Any]],
    suppress_token_ids: list[int],
    generations: int,
    max_new_tokens: int,
    prompts_per_step: int,
    steps: int,
    warmup: int,
    beta: float,
    lora: bool,
    gradient_checkpointing: bool,
    threads: int,
    accelerator: str,
    precision: str,
    out_dir: str,
    sdpa_backends: list[str] | None,
) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same model, rows and settings."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.accuracy import accuracy_reward
    from rewards.format import format_reward
    from rewards.validity import validity_reward

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.trainer: GRPOTrainer | None = None
            self.times: list[float] = []
            self.lengths: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter())
            self.lengths.append(self.trainer._metrics["train"]["completions/mean_length"][-1])

    baseline, backends = common.side_setup(threads, sdpa_backends)
    dataset = Dataset.from_list([{k: v for k, v in row.items() if k != "our_prompt_ids"} for row in rows])
    config = GRPOConfig(
        output_dir=out_dir,
        **common.hf_device_arguments(accelerator, precision),
        seed=SEED,
        max_steps=warmup + steps,
        # TRL 1.x counts completions per device batch: one step = one generation of P × G completions.
        per_device_train_batch_size=prompts_per_step * generations,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=generations,
        max_completion_length=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        generation_kwargs={"suppress_tokens": suppress_token_ids},
        beta=beta,
        loss_type=LOSS_TYPE,
        epsilon=EPSILON,
        epsilon_high=EPSILON_HIGH,
        num_iterations=1,
        scale_rewards="group",
        mask_truncated_completions=False,
        reward_weights=REWARD_WEIGHTS,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=gradient_checkpointing,  # TRL's default is on; ours is off
        shuffle_dataset=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to=[],
        logging_steps=warmup + steps + 1,
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
    )
    peft_config = None
    if lora:
        from peft import LoraConfig
        from transformers import AutoConfig

        from models.families import family_of

        peft_config = LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            # As models/loading.py: the language model's projections, not the vision tower's.
            target_modules=family_of(AutoConfig.from_pretrained(model_dir)).lora_regex(None),
        )
    timer = Timer()
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=[_trl_reward(f) for f in (accuracy_reward, format_reward, validity_reward)],
        args=config,
        train_dataset=dataset,
        peft_config=peft_config,
        callbacks=[timer],
    )
    timer.trainer = trainer
    trainer.train()
    result = _summary(timer.times, timer.lengths, prompts_per_step * generations, warmup)
    result.update(threads=torch.get_num_threads(), baseline_rss_mib=baseline, sdpa_backends=list(backends))
    return result


def main(argv: list[str] | None = None) -> None:
    # Here, not at the top: each spawned side imports this file, and the builders import every family's classes.
    from models.tiny.builders import TRAINING_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="completion budget (max_completion_length)")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="prompts per rollout / optimizer step")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight (0: no reference model)")
    parser.add_argument("--lora", action="store_true", help="the same LoRA on the language model, both sides")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="activation checkpointing on both sides (TRL's default)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per side (1: other processes on a shared 2-core machine do not stall OpenMP's threads)",
    )
    parser.add_argument(
        "--natural-length", action="store_true", help="let completions end (default: forced to full length)"
    )
    parser.add_argument(
        "--logprob-chunk-size",
        type=int,
        default=None,
        help="ours: LM-head chunk of the log-prob forwards (TRL always tiles its head)",
    )
    common.add_device_arguments(parser)
    parser.add_argument(
        "--family",
        choices=TRAINING_FAMILIES,
        default=DEFAULT_FAMILY,
        help=f"the training family whose tiny model both sides train ({DEFAULT_FAMILY}: the embedded model)",
    )
    parser.add_argument("--hidden-size", type=int, default=128, help="model width (128: the embedded tiny model)")
    parser.add_argument("--num-layers", type=int, default=4, help="decoder layers (4: the embedded tiny model)")
    parser.add_argument("--workdir", default="runs/bench")
    parser.add_argument("--out", default=None, help="raw numbers (default runs/bench/grpo_vs_trl[_FAMILY].json)")
    common.add_sdpa_argument(parser)
    parser.add_argument(
        "--cache-implementation",
        choices=["auto", "static", "dynamic"],
        default="auto",
        help="our decode loop's cache (auto: static with a captured step on a GPU, dynamic on CPU)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or (args.warmup < 1 and args.steps < 2):
        parser.error("time at least one step after the first")
    if args.family != DEFAULT_FAMILY and (args.hidden_size, args.num_layers) != (128, 4):
        parser.error(f"--hidden-size / --num-layers resize the embedded {DEFAULT_FAMILY} only, not --family")
    if args.out is None:
        suffix = "" if args.family == DEFAULT_FAMILY else f"_{args.family}"
        args.out = f"runs/bench/grpo_vs_trl{suffix}.json"

    model_dir, data_dir = common.prepare(args.workdir, hidden_size=args.hidden_size, num_layers=args.num_layers)
    if args.family != DEFAULT_FAMILY:
        model_dir = common.family_model(args.workdir, args.family)
    parameters = parameter_count(model_dir)
    full_length = not args.natural_length
    n_prompts = args.prompts_per_step * (args.warmup + args.steps)
    rows = render_prompts(model_dir, data_dir, n_prompts)
    if len(rows) < n_prompts:
        raise SystemExit(f"{data_dir} has {len(rows)} training questions; the run needs {n_prompts}")
    same_prompts = common.prompts_identical(model_dir, rows)
    shared = dict(
        generations=args.generations,
        max_new_tokens=args.max_new_tokens,
        prompts_per_step=args.prompts_per_step,
        steps=args.steps,
        warmup=args.warmup,
        beta=args.beta,
        lora=args.lora,
        gradient_checkpointing=args.gradient_checkpointing,
        threads=args.threads,
        accelerator=args.accelerator,
        precision=args.precision,
        sdpa_backends=args.sdpa_backends,
    )
    # Read when torch is imported in each spawned side, before set_num_threads (also sizes MKL's and OpenMP's pools).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    ours = common.measure(
        run_ours,
        model_dir=str(model_dir),
        data_dir=str(data_dir),
        full_length=full_length,
        logprob_chunk_size=args.logprob_chunk_size,
        cache_implementation=args.cache_implementation,
        **shared,
    )
    trl = common.measure(
        run_trl,
        model_dir=str(model_dir),
        rows=rows,
        suppress_token_ids=common.suppressed_ids(model_dir, full_length),
        out_dir=os.path.join(args.workdir, "trl-grpo-out"),
        **shared,
    )

    g, p, L = args.generations, args.prompts_per_step, args.max_new_tokens
    lora = f"r={LORA['r']}, alpha={LORA['alpha']}, dropout={LORA['dropout']}" if args.lora else "off"
    settings = [
        ("model", f"{args.family} {model_dir.name} ({parameters / 1e6:.2f}M parameters)", "same"),
        (
            "device / precision",
            f"accelerator={args.accelerator}, precision={args.precision}",
            ", ".join(f"{k}={v}" for k, v in common.hf_device_arguments(args.accelerator, args.precision).items()),
        ),
        ("prompts / step", f"batch_size={p}", f"per_device_train_batch_size={p * g} (completions)"),
        ("G", f"num_generations={g}", f"num_generations={g}"),
        ("completion length", f"max_new_tokens={L}", f"max_completion_length={L}"),
        (
            "full length",
            "end tokens suppressed" if full_length else "no",
            "end tokens suppressed" if full_length else "no",
        ),
        ("temperature / top_p / top_k", "1.0 / 1.0 / 0", "1.0 / 1.0 / 0"),
        ("beta (reference model)", str(args.beta), str(args.beta)),
        ("loss_type", LOSS_TYPE, LOSS_TYPE),
        ("epsilon / epsilon_high", f"{EPSILON} / {EPSILON_HIGH}", f"{EPSILON} / {EPSILON_HIGH}"),
        ("num_iterations", "1", "1 (steps_per_generation=1, GA=1)"),
        ("learning rate", f"{LEARNING_RATE} constant", f"{LEARNING_RATE} constant"),
        ("rewards (weights)", f"accuracy, format, validity {REWARD_WEIGHTS}", "same, wrapped"),
        ("LoRA", lora, lora),
        ("micro-batches", "1 (whole rollout)", "1 (whole rollout)"),
        ("LM head in log-prob forwards", f"logprob_chunk_size={args.logprob_chunk_size}", "tiled (TRL's own)"),
        ("gradient checkpointing", str(args.gradient_checkpointing), str(args.gradient_checkpointing)),
        ("decode cache", f"{args.cache_implementation} (auto: static + CUDA graph on GPU)", "dynamic (generate)"),
        ("SDPA kernels (GPU)", ", ".join(ours["sdpa_backends"]), ", ".join(trl["sdpa_backends"])),
        ("prompt ids", "ours", "identical" if same_prompts else "DIFFERENT"),
        ("threads", str(ours["threads"]), str(trl["threads"])),
    ]
    metrics = [
        ("completions/s", "completions_per_s"),
        ("completion tokens/s", "completion_tokens_per_s"),
        ("mean completion length", "mean_completion_length"),
        ("s / step", "seconds_per_step"),
        *common.memory_metrics(args.accelerator),
    ]
    rows_out = [(name, ours[key], trl[key], ours[key] / trl[key]) for name, key in metrics]
    print(common.table("GRPO settings", ["setting", "ours (GRPOModule)", "TRL GRPOTrainer"], settings))
    print(
        common.table(
            f"GRPO throughput: {p} prompts × G={g}, {L} new tokens, {args.steps} timed steps after {args.warmup}",
            ["metric", "ours", "TRL 1.16", "ours / TRL"],
            rows_out,
        )
    )
    print(common.machine())
    common.save(
        {
            "args": vars(args),
            "family": args.family,
            "parameters": parameters,
            "settings": {name: {"ours": a, "trl": b} for name, a, b in settings},
            "ours": ours,
            "trl": trl,
            "ratios": {key: ours[key] / trl[key] for _, key in metrics},
            "machine": common.machine(),
        },
        args.out,
    )
    print(f"raw numbers: {args.out}")


if __name__ == "__main__":
    main()
