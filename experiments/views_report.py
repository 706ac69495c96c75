"""The candidate-views ablation's report (configs/experiments/views.yaml), after ``experiments.replicate`` ran it.

    python -m experiments.views_report --config configs/experiments/replication.yaml \
        --config configs/experiments/views.yaml

Writes ``<out_dir>/comparison/views.md`` and ``views.json``: per arm, accuracy on every seed against the target
(the best arm without lesion masks at ≥ ``--target`` on every seed, within 4× the one-slice arm's image tokens and
1.5× its GRPO step time as ``benchmarks/views.py`` measured them), presence and abnormality accuracy, nodule F1,
the VLM's presence AUROC beside the ROI classifier's own AUROC on the same test questions (a gain that the
classifier's score alone would give is not the VLM's reading), how often some view of a positive question shows
its lesion (the build's ``lesion_coverage``), image tokens per prompt, and each arm's train + evaluate seconds;
then the paired differences of ``experiments.replicate``'s comparison against the one-slice CAM arm.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import atomic_write_text
from evaluation.formatting import fmt, markdown_table
from experiments.replicate import Arm, Experiment, load_experiment

COLUMNS = ("accuracy/presence", "accuracy/abnormality", "f1/Lung nodule", "auroc")


def vqa_dir(exp: Experiment, arm: Arm) -> Path:
    data = exp.arm_data(arm)
    return Path(data.get("vqa_dir") or Path(data["data_dir"]) / "vqa")


def uses_masks(arm_data: dict[str, Any]) -> bool:
    """Whether the arm's views come from lesion masks (the default source, or a MaskROI with lesions)."""
    source = arm_data.get("roi_source")
    if source is None:
        return True
    return source["class_path"].endswith("MaskROI") and source.get("init_args", {}).get("lesions", True)


def tokens_per_image(model_dir: Path, image_size: int) -> int:
    """Image tokens one ``image_size`` square image becomes in a prompt, by the model's own processor."""
    from PIL import Image

    from datamodules.processor import image_token_id, load_processor
    from datamodules.prompts import build_messages

    processor = load_processor(model_dir)
    text = processor.apply_chat_template(build_messages("?", [], ""), add_generation_prompt=True, tokenize=False)
    ids = processor(text=[text], images=[Image.new("RGB", (image_size, image_size))], return_tensors="pt")["input_ids"]
    return int((ids == image_token_id(processor)).sum())


def classifier_auroc(checkpoint: str, root: Path, records: list[dict[str, Any]]) -> float:
    """The ROI classifier's AUROC on the presence questions of ``records``: its volume score (slice logits pooled
    as in training) for the question's label against the answer."""
    from datamodules.ctrate import CTRATEPaths, load_ct_volume, read_split
    from evaluation.detection import auroc_or_nan
    from lightning_modules.roi_classifier import ROIClassifierModule, pool_slices

    module = ROIClassifierModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    rows = {r["VolumeName"]: r for r in read_split(root, "valid").to_dict("records")}
    scores: dict[str, torch.Tensor] = {}
    pairs = []
    for r in (r for r in records if r["question_type"] == "presence"):
        name = r["volume_name"]
        if name not in scores:
            volume = load_ct_volume(CTRATEPaths(root, "valid").volume(name), rows[name])
            logits = module.volume_maps(volume)[0].unsqueeze(0)
            scores[name] = pool_slices(logits, module.hparams.pooling, module.hparams.lse_r)[0]
        pairs.append((float(scores[name][module.labels.index(r["abnormality"])]), r["answer"] == "yes"))
    return auroc_or_nan(torch.tensor([p for p, _ in pairs]), torch.tensor([t for _, t in pairs]).long())


def view_key(views: dict[str, Any] | None) -> tuple[int, float]:
    """(K, slab mm) of a views setting; (1, 0.0) for one slice."""
    views = views or {}
    return int(views.get("k", 1)), float(views.get("slab_mm", 0.0))


def costs(bench: dict[str, Any] | None, views: dict[str, Any] | None) -> dict[str, float | None]:
    """The arm's SFT throughput and GRPO step time relative to one slice, from ``benchmarks/views.py``'s results
    for the side with the same K and slabs (None: not measured)."""
    sides = {view_key(r["views"]): r for r in (bench or {}).get("results", {}).values()}
    side, base = sides.get(view_key(views)), sides.get((1, 0.0))
    if side is None or base is None:
        return {"sft_throughput_ratio": None, "grpo_step_ratio": None}
    return {"sft_throughput_ratio": side["sft_samples_per_s"] / base["sft_samples_per_s"],
            "grpo_step_ratio": side["grpo_step_s"] / base["grpo_step_s"]}  # fmt: skip


def arm_row(
    exp: Experiment, arm: Arm, per_image: int, timings: dict[str, float], bench: dict[str, Any] | None
) -> dict[str, Any]:
    data = exp.arm_data(arm)
    metrics = [
        json.loads((exp.eval_dir(seed, exp.main_evaluation) / arm.name / "metrics.json").read_text())
        for seed in exp.seeds
    ]
    folder = vqa_dir(exp, arm)
    records = [json.loads(line) for line in (folder / "valid.jsonl").read_text().splitlines() if line.strip()]
    coverage = json.loads((folder / "build.json").read_text()).get("lesion_coverage", {}).get("valid", {})
    source = data.get("roi_source") or {}
    checkpoint = source.get("init_args", {}).get("checkpoint")
    return {
        "arm": arm.name,
        "masks": uses_masks(data),
        "accuracy": [m["accuracy"] for m in metrics],
        **{key: [m.get(key, float("nan")) for m in metrics] for key in COLUMNS},
        "classifier_auroc": classifier_auroc(checkpoint, Path(data["data_dir"]), records) if checkpoint else None,
        "some_view_shows_lesion": coverage.get("some_view_shows_lesion"),
        "image_tokens_per_prompt": per_image * float(np.mean([len(r.get("views") or [0]) for r in records])),
        "seconds": statistics.mean(timings[f"seed{s}/{arm.name}"] for s in exp.seeds),
        **costs(bench, data.get("views")),
    }


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def mean_std(values: list[float]) -> str:
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def render(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], target: float, base: str) -> str:
    header = ["arm", "accuracy (per seed)", "mean ± std", "presence", "abnormality", "F1 nodule", "VLM AUROC",
              "CAM AUROC", "some view shows lesion", "image tokens / prompt", "SFT samples/s", "GRPO s/step",
              "train + eval s"]  # fmt: skip
    lines = ["# Candidate views: CAM views without lesion masks against the oracle view", ""]
    table = [
        [
            r["arm"] + (" (masks)" if r["masks"] else ""),
            " / ".join(fmt(a) for a in r["accuracy"]),
            mean_std(r["accuracy"]),
            *(mean_std(r[key]) for key in COLUMNS[:3]),
            fmt(np.nanmean(r["auroc"])),
            fmt(r["classifier_auroc"]) if r["classifier_auroc"] is not None else "–",
            fmt(r["some_view_shows_lesion"]),
            f"{r['image_tokens_per_prompt']:.1f}",
            ratio(r["sft_throughput_ratio"]),
            ratio(r["grpo_step_ratio"]),
            f"{r['seconds']:.0f}",
        ]
        for r in rows
    ]
    lines += markdown_table(header, table, ["l", "l", *["r"] * (len(header) - 2)])
    lines += ["", "SFT samples/s and GRPO s/step: ratios to one slice per question (benchmarks/views.py, same K and "
              "slabs; – not measured). Image tokens: mean over the test prompts."]  # fmt: skip
    candidates = [r for r in rows if not r["masks"]]
    if candidates:
        best = max(candidates, key=lambda r: np.mean(r["accuracy"]))
        base_tokens = next((r["image_tokens_per_prompt"] for r in rows if r["arm"] == base), None)
        checks = {
            f"accuracy ≥ {target:.2f} on every seed": all(a >= target for a in best["accuracy"]),
            "≤ 4× the image tokens": base_tokens is not None and best["image_tokens_per_prompt"] <= 4 * base_tokens,
            "≤ 1.5× the GRPO step time": None if best["grpo_step_ratio"] is None else best["grpo_step_ratio"] <= 1.5,
        }
        said = {True: "yes", False: "no", None: "not measured"}
        verdict = "; ".join(f"{name}: {said[ok]}" for name, ok in checks.items())
        lines += ["", f"Best arm without lesion masks: **{best['arm']}** ({mean_std(best['accuracy'])}). {verdict}. "
                  f"Target **{'met' if all(ok is True for ok in checks.values()) else 'not met'}**."]  # fmt: skip
    lines += ["", f"Paired differences against {base} (b − a; same questions, all seeds):", ""]
    paired = []
    for p in pairs:
        if p["a"] != base or "results" not in p:
            continue
        for part in ("all", "presence", "abnormality"):
            res = p["results"].get(part)
            if res:
                ci = f"[{fmt(res['ci_low'], True)}, {fmt(res['ci_high'], True)}]"
                mark = " *" if res["significant"] else ""
                paired.append([p["b"], part, str(res["n_questions"]), fmt(res["difference"], True) + mark, ci,
                               f"{res['p_value']:.3g}"])  # fmt: skip
    lines += markdown_table(["arm b", "questions", "n", "difference", "95 % CI", "p"], paired, ["l", "l"] + ["r"] * 4)
    lines += ["", "\\* p < 0.05 and a 95 % CI that excludes 0 (evaluation/paired.py)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m experiments.views_report", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="the experiment's YAML files, in order")
    parser.add_argument("--smoke", action="store_true", help="the spec's smoke section (tiny budgets)")
    parser.add_argument("--target", type=float, default=0.66, help="accuracy the best maskless arm must reach")
    parser.add_argument("--base", default="cam_k1_slice", help="arm the paired differences are taken against")
    parser.add_argument("--bench", default="runs/bench/views.json", help="benchmarks/views.py's results (costs)")
    args = parser.parse_args(argv)
    exp = load_experiment(args.config, args.smoke)
    out = exp.comparison_dir(exp.main_evaluation)
    timings = json.loads((out / "timings.json").read_text())
    per_image = tokens_per_image(exp.out_dir / f"seed{exp.seeds[0]}" / "init-model", int(exp.data["image_size"]))
    bench = json.loads(Path(args.bench).read_text()) if Path(args.bench).is_file() else None
    rows = [arm_row(exp, arm, per_image, timings, bench) for arm in exp.arms]
    pairs = json.loads((out / "paired.json").read_text())
    text = render(rows, pairs, args.target, args.base)
    atomic_write_text(out / "views.md", text)
    atomic_write_text(out / "views.json", json.dumps(rows, indent=1) + "\n")
    print(text)
    return out / "views.md"


if __name__ == "__main__":
    main()
