"""Rollout decoding alone, side by side: our grouped sampler (dynamic cache; static cache; static cache with the
step compiled, a CUDA graph on a GPU) against ``model.generate`` on G copies of every prompt (TRL's ``generate``
path), and against the memory-bandwidth bound of the device.

    python benchmarks/decode.py                                   # CPU, the embedded tiny model
    python benchmarks/decode.py --accelerator gpu --precision bf16-mixed [--hidden-size 1024 --num-layers 16]

Every side samples P prompts × G completions of exactly ``--max-new-tokens`` tokens (end tokens suppressed, as
in benchmarks/grpo_vs_trl.py), temperature 1, no top-k/top-p, in its own process (``common.measure``), with the
same SDPA kernels allowed (``--sdpa-backends``, default ours: flash, efficient, math), timed over ``--repeats``
rollouts after one untimed one (the compiled sides compile and capture in it), each rollout its prefill and its
decode. bf16-mixed means what a GRPO fit decodes with: fp32 weights under bf16 autocast, on every side.

Bound: a decode step must read every language-model weight and each row's KV cache once, so it takes at least
(weight bytes + KV bytes) ÷ memory bandwidth; tokens/s ≤ rows ÷ that. ``--bandwidth-tbs`` (default 4.8, the
H200's HBM3e) is printed on a GPU run only: on CPU the bound is not the limit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402

SIDES = {  # name -> DecodeArgs of our sampler, or {"generate": cache_implementation} on repeated prompts
    "ours, dynamic cache": {"cache_implementation": "dynamic"},
    "ours, static cache": {"cache_implementation": "static", "compile": False},
    "ours, static + compiled step": {"cache_implementation": "static", "compile": True},
    "generate, G copies (TRL's path)": {"generate": "dynamic"},
    "generate, G copies, static cache (+ its compile on CUDA)": {"generate": "static"},
}
GPU_ONLY = ("ours, static + compiled step", "generate, G copies, static cache (+ its compile on CUDA)")


def _batch(model_dir: str, data_dir: str, prompts: int) -> dict[str, Any]:
    dm = common.bench_datamodule(model_dir, data_dir, batch_size=prompts, shuffle=False)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def run_side(
    model_dir: str,
    data_dir: str,
    decoding: dict[str, Any],
    suppress: list[int],
    prompts: int,
    generations: int,
    max_new_tokens: int,
    repeats: int,
    accelerator: str,
    precision: str,
    sdpa_backends: list[str],
    threads: int,
) -> dict[str, Any]:
    """One side's rollouts (prefill + decode): seconds per rollout, completion tokens/s, the post-import memory
    baseline, and whether a compiled step stayed compiled."""
    import torch

    from datamodules.collate import prompt_inputs
    from datamodules.processor import load_processor
    from models.loading import load_model
    from rl.decode_steps import DecodeArgs
    from rl.prompt_batch import repeat_prompts
    from rl.sampling import SamplingConfig, end_token_ids, sample_completions
    from rl.static_decode import StaticDecodeSteps

    baseline_rss, _ = common.side_setup(threads, sdpa_backends)
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    # As in a fit: fp32 weights, and under bf16-mixed bf16 autocast (what a GRPO rollout decodes with).
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    model = load_model(model_dir).to(device).eval()
    tokenizer = load_processor(model_dir).tokenizer
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in _batch(model_dir, data_dir, prompts).items()}
    steps, times = StaticDecodeSteps(), []
    for i in range(repeats + 1):
        generator = torch.Generator(device=device).manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            if "generate" in decoding:
                rows = repeat_prompts(batch, generations)
                out = model.generate(
                    **prompt_inputs(rows), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                    max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, suppress_tokens=suppress,
                    pad_token_id=tokenizer.pad_token_id, cache_implementation=decoding["generate"],
                )  # fmt: skip
                new_tokens = out.shape[1] - rows["prompt_input_ids"].shape[1]
            else:
                sampling = SamplingConfig(max_new_tokens, decoding=DecodeArgs(**decoding))
                ends = end_token_ids(model, tokenizer)
                rollout = sample_completions(
                    model, batch, generations, sampling, ends, tokenizer.pad_token_id, suppress, generator,
                    static_steps=steps,
                )  # fmt: skip
                new_tokens = rollout.completion_ids.shape[1]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert new_tokens == max_new_tokens, f"{new_tokens} new tokens, not {max_new_tokens}"
    seconds = statistics.median(times[1:])
    language = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "visual" not in n)
    return {
        "first_rollout_s": times[0],
        "seconds_per_rollout": seconds,
        "completion_tokens_per_s": prompts * generations * max_new_tokens / seconds,
        "baseline_rss_mib": baseline_rss,
        "language_weight_bytes": language,
        "prompt_length": int(batch["prompt_input_ids"].shape[1]),
        "compiled_steps": [step.compiled for step in steps._steps.values()],
    }


def bandwidth_bound(model_dir: str, result: dict[str, Any], rows: int, new_tokens: int, dtype_bytes: int, tbs: float):
    """Completion tokens/s at the memory-bandwidth bound: per step, the language weights (as stored: fp32 under
    bf16 autocast, as in a fit) + every row's KV cache (``dtype_bytes`` per value, at the mean context, prompt +
    half the completion) read once."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(model_dir).get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    context = result["prompt_length"] + new_tokens / 2
    kv = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * context * rows * dtype_bytes
    return rows / ((result["language_weight_bytes"] + kv) / (tbs * 1e12))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="P, prompts per rollout")
    parser.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts after an untimed one")
    parser.add_argument("--sides", nargs="+", choices=list(SIDES), default=None, help="default: all")
    parser.add_argument("--bandwidth-tbs", type=float, default=4.8, help="device memory bandwidth, TB/s (GPU)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="runs/bench")
    parser.add_argument("--out", default="runs/bench/decode.json")
    common.add_device_arguments(parser)
    common.add_sdpa_argument(parser)
    args = parser.parse_args(argv)
    backends = args.sdpa_backends
    model_dir, data_dir = common.prepare(args.workdir, hidden_size=args.hidden_size, num_layers=args.num_layers)
    sides = args.sides or [s for s in SIDES if args.accelerator == "gpu" or s not in GPU_ONLY]
    suppress = common.suppressed_ids(model_dir, full_length=True)  # here: its model load is no side's memory
    results = {}
    for name in sides:
        results[name] = common.measure(
            run_side, model_dir=str(model_dir), data_dir=str(data_dir), decoding=SIDES[name], suppress=suppress,
            prompts=args.prompts,
            generations=args.generations, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
            accelerator=args.accelerator, precision=args.precision, sdpa_backends=backends, threads=args.threads,
        )  # fmt: skip
    reference = results.get("generate, G copies (TRL's path)")
    for name, r in list(results.items()):  # a compiled step that fell back to eager is not reported as compiled
        if SIDES[name].get("compile") and not all(r["compiled_steps"]):
            results[f"{name} (FELL BACK to uncompiled)"] = results.pop(name)
    rows = args.prompts * args.generations
    bound = None
    if args.accelerator == "gpu":
        dtype_bytes = 2 if args.precision == "bf16-mixed" else 4
        first = next(iter(results.values()))
        bound = bandwidth_bound(str(model_dir), first, rows, args.max_new_tokens, dtype_bytes, args.bandwidth_tbs)
    lines = []
    for name, r in results.items():
        ratio = f"{r['completion_tokens_per_s'] / reference['completion_tokens_per_s']:.3g}" if reference else "–"
        share = f"{r['completion_tokens_per_s'] / bound:.1%}" if bound else "–"
        memory = (round(r["rss_above_imports_mib"]), round(r["peak_gpu_mib"]) if args.accelerator == "gpu" else "–")
        lines.append((name, r["completion_tokens_per_s"], ratio, share, r["first_rollout_s"], *memory))
    header = ["side", "completion tokens/s", "÷ generate", "÷ decode bound", "first rollout s",
              "peak RSS above post-import MiB", "peak GPU MiB"]  # fmt: skip
    title = (f"Decode: {args.prompts} prompts × G={args.generations}, {args.max_new_tokens} tokens, "
             f"{args.accelerator} {args.precision}, SDPA {', '.join(backends)}")  # fmt: skip
    print(common.table(title, header, lines))
    if bound:
        print(f"decode bound: {bound:.3g} completion tokens/s at {args.bandwidth_tbs} TB/s ({rows} rows); the "
              "measured rollouts include their prefill")  # fmt: skip
    print(common.machine())
    common.save({"args": vars(args), "results": results, "bound_tokens_per_s": bound, "machine": common.machine()},
                args.out)  # fmt: skip
    print(f"raw numbers: {args.out}")


if __name__ == "__main__":
    main()
