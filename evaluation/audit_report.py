"""The visual-reliance audit's outputs (``evaluation/audit.py``): table.md/json, accuracy.png and report.md.

Numbers per condition come from its run folder's ``predictions.jsonl``: every column with a percentile bootstrap CI
(``evaluation/baseline_table.py``, checked against ``metrics.json``), and accuracy's paired difference to
``original`` on the same questions with its CI and exact p (``evaluation/paired.py``; one run per condition).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from evaluation.baseline_table import bootstrap_table_row, mismatches
from evaluation.formatting import cell, fmt, json_safe, markdown_table, qtype_key
from evaluation.paired import compare_arms

WHAT = {
    "original": "the image of training and evaluation",
    "blank": "a uniform grey image of the same size",
    "shuffled": "another question's image and box, same question type, another volume where possible",
    "global_only": "the slice alone: no inset, no outline",
    "outline_only": "the slice with the box outlined, no inset",
    "zoom_only": "the inset (zoom) alone, the global view black",
    "wrong_region": "the box moved to a lesion-free place of the same size on the same slice",
    "box_anatomy": "boxes from HU anatomy + report words (AnatomyROI) instead of lesion masks",
    "box_cam": "boxes from the ROI classifier's CAM (CAMROI) instead of lesion masks",
}


def _ci(stats: Mapping[str, float] | None) -> str:
    return "–" if not stats else f"{fmt(stats['value'])} [{fmt(stats['low'])}, {fmt(stats['high'])}]"


def delta_cells(result: Mapping[str, Any] | None) -> tuple[str, str]:
    """A paired difference (``PairedResult.as_dict()``) as table cells: "Δ [low, high]" and "p *"; dashes for none."""
    if not result:
        return "–", "–"
    star = " *" if result["significant"] else ""
    low, high = fmt(result["ci_low"], signed=True), fmt(result["ci_high"], signed=True)
    return f"{fmt(result['difference'], signed=True)} [{low}, {high}]", f"{result['p_value']:.2g}{star}"


def pick_cases(predictions: Sequence[Mapping[str, Any]], n: int) -> list[str]:
    """Up to ``n`` question ids to show under every condition: per question type in turn (the project's order),
    the first by id the model answered right on the original image (else the first), until ``n``."""
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(predictions, key=lambda r: str(r["id"])):
        by_type.setdefault(str(row["question_type"]), []).append(row)
    queues = {q: sorted(rows, key=lambda r: not r["correct"]) for q, rows in by_type.items()}
    picked: list[str] = []
    while len(picked) < n and any(queues.values()):
        for qtype in sorted(queues, key=qtype_key):
            if queues[qtype] and len(picked) < n:
                picked.append(str(queues[qtype].pop(0)["id"]))
    return picked


def summarize(
    runs: Mapping[str, Mapping[str, Any]],
    errors: Mapping[str, str | None],
    notes: Mapping[str, Mapping[str, int]],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Per condition: its columns with CIs, the paired differences to ``original``, what was done to its images;
    and the problems (failed conditions, numbers that disagree with metrics.json, other questions)."""
    base = runs["original"]["predictions"]
    rows, problems = [], []
    for condition, error in errors.items():
        if error:
            rows.append({"condition": condition, "status": "failed", "error": error})
            problems.append(f"{condition}: {error}")
            continue
        run = runs[condition]
        stats = bootstrap_table_row(run["predictions"], n_boot, seed)
        problems += [f"{condition}: {m}" for m in mismatches(stats, run["metrics"])]
        paired = compare_arms({0: base}, {0: run["predictions"]}, n_boot)
        chance = sum(1 / len(r["options"]) for r in run["predictions"] if r.get("options")) / len(run["predictions"])
        rows.append(
            {
                "condition": condition,
                "status": "ok",
                "n": len(run["predictions"]),
                "sample_ids_sha256": run["info"].get("sample_ids_sha256"),
                "chance": chance,
                "metrics": stats,
                "paired_vs_original": {k: v.as_dict() for k, v in paired.items()},
                "images": dict(notes.get(condition, {})),
            }
        )
    if len({r["sample_ids_sha256"] for r in rows if r["status"] == "ok"}) > 1:
        problems.append("the conditions were not evaluated on the same questions (sample_ids_sha256 differ)")
    model = runs["original"]["info"].get("model_path") or runs["original"]["info"].get("ckpt_path")
    ci = {"method": "percentile bootstrap over questions", "n_boot": n_boot, "seed": seed}
    return {"model": model, "confidence": 0.95, "ci": ci, "rows": rows, "problems": problems}


def render_table(summary: Mapping[str, Any]) -> str:
    """table.md: one summary table, then one table per condition (per question type) with the paired difference."""
    ok = [r for r in summary["rows"] if r["status"] == "ok"]
    header = ["Condition", "Accuracy [95 % CI]", "Δ vs original [95 % CI]", "p", "AUROC p(yes)", "Format", "Validity"]
    summary_rows = []
    for r in summary["rows"]:
        if r["status"] != "ok":
            summary_rows.append([r["condition"], "failed", *["–"] * 5])
            continue
        m, versus = r["metrics"], r["paired_vs_original"]["all"] if r["condition"] != "original" else None
        rates = [fmt(m["format_rate"]["value"]), fmt(m["validity_rate"]["value"])]
        summary_rows.append([r["condition"], _ci(m["accuracy"]), *delta_cells(versus), _ci(m["auroc"]), *rates])
    lines = [f"# Visual-reliance audit: {summary['model']}", "", *markdown_table(header, summary_rows), ""]
    if ok:
        lines += [f"n = {ok[0]['n']} questions; chance accuracy {fmt(ok[0]['chance'])}.", ""]
    for r in ok:
        m, paired = r["metrics"], r["paired_vs_original"]
        types = sorted((k.split("/", 1)[1] for k in m if k.startswith("accuracy/")), key=qtype_key)
        body = []
        for qtype in [*types, "all"]:
            key = "accuracy" if qtype == "all" else f"accuracy/{qtype}"
            delta = delta_cells(paired.get(qtype) if r["condition"] != "original" else None)
            body.append([qtype, str(paired[qtype]["n_questions"]), _ci(m[key]), *delta])
        lines += [f"## {r['condition']}: {WHAT.get(r['condition'], '')}", ""]
        lines += markdown_table(["Question type", "n", "Accuracy [95 % CI]", "Δ vs original [95 % CI]", "p"], body)
        extra = ", ".join(f"{k} {_ci(m[k])}" for k in ("macro_f1", "auroc", "format_rate", "validity_rate"))
        images = ", ".join(f"{k}: {v}" for k, v in sorted(r["images"].items()))
        lines += ["", f"{extra}." + (f" Images: {images}." if images else ""), ""]
    lines += [
        "CIs: percentile bootstrap over questions (the same resamples for every condition). Δ: paired difference "
        "in accuracy to `original` on the same questions; p: exact McNemar (sign-flip) test; * p < 0.05 and a CI "
        "that excludes 0. AUROC: of p(yes) on the presence questions. Images: what was done to each question's "
        "image (`moved`, `no lesion-free place of this size`: box kept; `proposed`, `no proposal`, `lesion box "
        "kept`: location, size and count questions keep their lesion boxes).",
        "",
    ]
    return "\n".join(lines + problem_lines(summary["problems"]))


def problem_lines(problems: list[str]) -> list[str]:
    """Markdown lines listing a summary's problems under a bold heading; none when there are none."""
    return ["**Problems**", "", *[f"- {cell(p)}" for p in problems], ""] if problems else []


def plot_audit(summary: Mapping[str, Any], path: Path) -> Path:
    """Accuracy and p(yes) AUROC by condition with their 95 % CIs; chance and 0.5 dashed."""
    from evaluation.plots import plt, save_figure

    ok = [r for r in summary["rows"] if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in zip(axes, ("accuracy", "auroc"), ("Accuracy", "AUROC of p(yes), presence"), strict=True):
        values = [r["metrics"][key] for r in ok]
        x = range(len(ok))
        ax.bar(x, [v["value"] for v in values], color=["tab:blue"] + ["tab:orange"] * (len(ok) - 1))
        err = [[v["value"] - v["low"] for v in values], [v["high"] - v["value"] for v in values]]
        ax.errorbar(x, [v["value"] for v in values], yerr=err, fmt="none", ecolor="black", capsize=3)
        ax.axhline(ok[0]["chance"] if key == "accuracy" else 0.5, color="grey", ls="--", label="chance")
        ax.set_xticks(list(x), [r["condition"] for r in ok], rotation=35, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend(loc="upper right")
    return save_figure(fig, path)


def render_report(
    out: Path, summary: Mapping[str, Any], runs: Mapping[str, Any], cases: list[str], images: Mapping[str, Any]
) -> str:
    """report.md: the figure, the summary, and each case under every condition with the image the model saw."""
    lines = [f"# Visual-reliance audit: {summary['model']}", "", "![accuracy by condition](accuracy.png)", ""]
    lines += ["Tables with CIs and paired differences: [table.md](table.md).", "", "## Cases", ""]
    by_id = {c: {r["id"]: r for r in runs[c]["predictions"]} for c in runs}
    for qid in cases:
        first = by_id["original"][qid]
        lines += [f"### {cell(qid)} ({first['question_type']})", "", f"**Q:** {cell(first['question'])}  "]
        lines += [f"**Options:** {cell(', '.join(first.get('options') or []))}; **truth:** {cell(first['truth'])}", ""]
        body = []
        for condition in runs:
            row, image = by_id[condition][qid], Path(images[condition][qid]).relative_to(out)
            mark = "✓" if row["correct"] else "✗"
            body.append([condition, f"![{condition}]({image.as_posix()})", cell(row["answer"], 40), mark,
                         fmt(row.get("p_yes"))])  # fmt: skip
        lines += markdown_table(["Condition", "Image the model saw", "Answer", "", "p(yes)"], body, ["l"] * 5)
        lines.append("")
    return "\n".join(lines)


def write_outputs(
    out: Path, summary: Mapping[str, Any], runs: Mapping[str, Any], cases: list[str], images: Mapping[str, Any]
) -> Path:
    """table.md, table.json, accuracy.png and report.md in ``out``, each written atomically; returns report.md."""
    atomic_write_text(out / "table.json", json.dumps(json_safe(dict(summary)), indent=2) + "\n")
    atomic_write_text(out / "table.md", render_table(summary))
    if any(r["status"] == "ok" for r in summary["rows"]):
        plot_audit(summary, out / "accuracy.png")
    return atomic_write_text(out / "report.md", render_report(out, summary, runs, cases, images))
