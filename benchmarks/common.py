"""What every benchmark shares: the embedded tiny model and synthetic data, isolated measurement processes,
peak memory, and the printed tables.

Each side of a comparison runs in its own fresh process (``measure``), so its peak resident memory is its own and
neither side warms caches for the other. Both sides of one comparison run in the same invocation, one after the
other, on the same machine: the printed ratios are what the benchmark claims, not the absolute numbers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prepare(
    workdir: str | Path = "runs/bench", n_volumes: int = 24, hidden_size: int = 128, num_layers: int = 4
) -> tuple[Path, Path]:
    """The embedded tiny Qwen2.5-VL and a synthetic CT-RATE with its VQA files under ``workdir`` (built once).

    ``hidden_size`` / ``num_layers`` other than the embedded default's (128, 4) build a larger model of the same
    architecture and tokenizer beside it (e.g. 1024 × 16, about 200M parameters: enough work per forward for a
    GPU to be measured rather than Python's launch overhead).
    """
    from datamodules.synthetic_ctrate import generate
    from datamodules.vqa_builder import build_vqa
    from models.embedded import build_embedded_model

    workdir = Path(workdir)
    name = "tiny-qwen2.5-vl" if (hidden_size, num_layers) == (128, 4) else f"qwen2.5-vl-h{hidden_size}-l{num_layers}"
    model_dir, data_dir = workdir / name, workdir / "synthetic-ctrate"
    if not (model_dir / "config.json").is_file():
        build_embedded_model(model_dir, hidden_size=hidden_size, num_layers=num_layers)
    if not (data_dir / "vqa" / "train.jsonl").is_file():
        generate(data_dir, n=n_volumes, seed=0)
        build_vqa(data_dir, seed=0)
    return model_dir, data_dir


def family_model(workdir: str | Path, family: str) -> Path:
    """The tiny model of a training ``family`` (``models.tiny.builders``) under ``workdir``, built once."""
    from models.tiny.builders import build_tiny

    model_dir = Path(workdir) / f"tiny-{family}"
    if not (model_dir / "config.json").is_file():
        build_tiny(family, model_dir)
    return model_dir


def bench_datamodule(model_dir: str | Path, data_dir: str | Path, batch_size: int, **overrides: Any) -> Any:
    """The CT-VQA data module with configs/sft.yaml's image settings (lung window, inset zoom, 112 px, think
    prompts), seed 0, and no worker processes unless ``overrides`` say otherwise (a worker's memory would not count
    in the measured process's peak RSS)."""
    from datamodules.ct_vqa import CTVQADataModule
    from datamodules.vqa_dataset import ZoomSpec

    settings = dict(
        data_dir=str(data_dir),
        processor_path=str(model_dir),
        synthetic=None,
        windows=["lung"],
        zoom=ZoomSpec(),
        image_size=112,
        prompt_format="think",
        batch_size=batch_size,
        num_workers=0,
        seed=0,
    )
    return CTVQADataModule(**{**settings, **overrides})


def bench_grpo_module(model_dir: str | Path, num_generations: int, length: int, module_class: Any = None) -> Any:
    """A ``GRPOModule`` (or ``module_class``) with configs/grpo.yaml's loss and rewards (beta 0.04 with a frozen
    reference, dapo, epsilon_high 0.28, micro-batches of 32 completions), seeded sampling and no completion logs."""
    from lightning_modules.grpo import GRPOModule
    from rl.config import GenerationArgs, LoggingArgs, LossArgs, RewardArgs

    return (module_class or GRPOModule)(
        model_path=str(model_dir),
        generation=GenerationArgs(num_generations=num_generations, sampling_seed=0),
        max_new_tokens=length,
        loss=LossArgs(beta=0.04, epsilon_high=0.28),
        learning_rate=2e-5,
        rewards=RewardArgs(reward_weights=[1.0, 0.5, 0.5]),
        micro_batch_size=32,
        logging=LoggingArgs(log_completions_every_n_steps=0),
    )


# --accelerator / --precision of the comparisons: Lightning's precision names, and what the Hugging Face side
# (Trainer, TRL) runs for each. bf16-mixed = fp32 weights under bf16 autocast, as TrainingArguments(bf16=True).
PRECISIONS = ("32-true", "bf16-mixed")


def add_device_arguments(parser: Any) -> None:
    """``--accelerator`` and ``--precision``, the same on both sides of a comparison."""
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="where both sides run")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32-true",
        help="both sides: fp32, or bf16 autocast over fp32 weights (HF bf16=True); bf16 wants --accelerator gpu",
    )


def hf_device_arguments(accelerator: str, precision: str) -> dict[str, Any]:
    """The ``TrainingArguments`` / ``GRPOConfig`` fields equal to our ``accelerator`` and ``precision``."""
    return {"use_cpu": accelerator == "cpu", "bf16": precision == "bf16-mixed", "fp16": False}


def bench_trainer(
    max_steps: int, callbacks: list[Any], accelerator: str = "cpu", precision: str = "32-true", **overrides: Any
) -> Any:
    """A Lightning Trainer that only trains on one device: no validation, logs, checkpoints or bars."""
    import lightning as L

    settings = dict(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    return L.Trainer(**{**settings, **overrides})


def add_sdpa_argument(parser: Any) -> None:
    """``--sdpa-backends``: the attention kernels every side of a comparison may use (default: ours)."""
    from typing import get_args

    from models.attention import DEFAULT_SDPA_BACKENDS, SdpaBackend

    parser.add_argument(
        "--sdpa-backends",
        nargs="+",
        choices=get_args(SdpaBackend),
        default=list(DEFAULT_SDPA_BACKENDS),
        help=f"SDPA kernels allowed on every side (default: {', '.join(DEFAULT_SDPA_BACKENDS)}, models/attention.py)",
    )


def side_setup(threads: int, sdpa_backends: Sequence[str] | None) -> tuple[float, tuple[str, ...]]:
    """What every measured side does first, after its imports: its torch threads, the same SDPA kernels as the
    other side (torch's process-wide switches: a library side would otherwise allow cuDNN attention, which ours
    does not), and the post-import memory baseline. Returns (peak RSS so far in MiB, the kernels allowed)."""
    from models.attention import set_sdpa_backends

    torch.set_num_threads(threads)
    return peak_rss_mib(), set_sdpa_backends(sdpa_backends)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mib() -> float:
    """Peak GPU memory this process's tensors held (PyTorch's allocator), MiB; 0 where no GPU was used."""
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else 0.0


def memory_metrics(accelerator: str) -> list[tuple[str, str]]:
    """(row name, result key) of the peak memories worth printing for a run on ``accelerator``."""
    rows = [("peak RSS MiB", "peak_rss_mib"), ("peak RSS above post-import MiB", "rss_above_imports_mib")]
    return rows + [("peak GPU MiB", "peak_gpu_mib")] if accelerator == "gpu" else rows


def _child(fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any], queue: mp.Queue) -> None:
    try:
        result = fn(**kwargs)
        result["peak_rss_mib"] = peak_rss_mib()
        result["peak_gpu_mib"] = peak_gpu_mib()
        # Above what the side's imports (torch, Lightning or TRL, …) held: what its model, data and steps cost.
        result["rss_above_imports_mib"] = result["peak_rss_mib"] - result.get("baseline_rss_mib", float("nan"))
        queue.put(("ok", result))
    except BaseException as err:  # report, don't hang the parent
        import traceback

        queue.put(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def measure(fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """Run ``fn(**kwargs)`` in a fresh spawned process; its result dict plus that process's ``peak_rss_mib``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, kwargs, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its process:\n{payload}")
    return payload


def machine() -> str:
    """One line naming the machine the numbers come from."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {device}, torch {torch.__version__}"
    )


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (printed, and pasteable into benchmarks/README.md)."""

    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save(results: dict[str, Any], path: str | Path) -> None:
    """Write the raw numbers next to the printed table (JSON), atomically."""
    from common.files import atomic_write_text
    from evaluation.formatting import json_safe

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(json_safe(results), indent=2) + "\n")


def prompts_identical(model_dir: Path, rows: list[dict[str, Any]]) -> bool:
    """Whether TRL's way of tokenising a row (chat template + processor, image filled in) gives our prompt ids."""
    from trl.data_utils import prepare_multimodal_messages

    from datamodules.processor import load_processor

    processor = load_processor(model_dir)
    for row in rows:
        messages = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
        ids = processor.apply_chat_template(
            conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"][0]
        if list(ids) != row["our_prompt_ids"]:
            return False
    return True


def suppressed_ids(model_dir: Path, full_length: bool) -> list[int]:
    """The tokens our sampler never emits (special tokens), plus the end tokens when forcing full length."""
    from datamodules.processor import load_processor
    from models.loading import load_model
    from rl.sampling import end_token_ids, special_token_ids

    tokenizer = load_processor(model_dir).tokenizer
    ends = end_token_ids(load_model(model_dir), tokenizer)
    return sorted(set(special_token_ids(tokenizer, keep=ends)) | (set(ends) if full_length else set()))
