"""Markdown report for one evaluation run folder: reproduction info, metric tables, plots, example predictions."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.case_images import pick_cases
from evaluation.formatting import DASH, as_float, cell, fmt, markdown_table, qtype_key

PLOT_TITLES: dict[str, str] = {
    "abnormality_f1": "F1 per abnormality",
    "confusion": "Confusion matrices per question type",
    "confusion_matrices": "Confusion matrices per question type",
    "calibration": "Calibration of P(yes) on presence questions",
    "comparison": "Run comparison",
}


def _chance(preds: Sequence[Mapping[str, Any]]) -> float:
    """Expected accuracy of a uniform guess among each sample's options."""
    vals = [1.0 / len(p["options"]) for p in preds if p.get("options")]
    return sum(vals) / len(vals) if vals else math.nan


def _qtype_rows(metrics: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for p in predictions:
        by_type.setdefault(str(p.get("question_type")), []).append(p)
    qtypes = set(by_type) | {k.split("/", 1)[1] for k in metrics if k.startswith("accuracy/")}
    rows = []
    for q in sorted(qtypes, key=qtype_key):
        preds = by_type.get(q, [])
        # metrics.json is authoritative; fall back to the predictions for anything it lacks.
        n = as_float(metrics.get(f"n/{q}"))
        n = len(preds) if math.isnan(n) else n
        acc = as_float(metrics.get(f"accuracy/{q}"))
        if math.isnan(acc) and preds:
            acc = sum(bool(p.get("correct")) for p in preds) / len(preds)
        chance = as_float(metrics.get(f"chance/{q}"))
        chance = _chance(preds) if math.isnan(chance) else chance
        rows.append([q, str(int(n)), fmt(acc), fmt(chance), fmt(acc - chance, signed=True)])
    return rows


def _support(stats: Mapping[str, Any]) -> int:
    """Support as an int, -1 when missing (sorts last, shown as "–")."""
    v = as_float(stats.get("support"))
    return int(v) if math.isfinite(v) else -1


def answer_flags(p: Mapping[str, Any]) -> list[str]:
    """What is wrong with an answer's form: "unformatted" (no answer parsed), "not an option"."""
    unformatted, invalid = not p.get("formatted"), p.get("answer") is not None and not p.get("valid")
    return [flag for flag, bad in (("unformatted", unformatted), ("not an option", invalid)) if bad]


def _example(p: Mapping[str, Any], image: str | None) -> list[str]:
    answer, flags = p.get("answer"), answer_flags(p)
    answer_text = DASH if answer is None else f"`{cell(answer, 80)}`"
    lines = [
        f"- **{cell(p.get('id', '?'))}** ({cell(p.get('question_type', '?'))}, {cell(p.get('volume_name', '?'))})",
        f"  - Image the model saw: ![{cell(p.get('id', '?'))}]({image})" if image else "  - Image: not available",
        f"  - Q: {cell(p.get('question', ''), 200)}",
        f"  - Options: {' / '.join(cell(o, 60) for o in p.get('options') or [])}",
        f"  - Truth: `{cell(p.get('truth', ''), 80)}` · Answer: {answer_text}"
        + (f" ({', '.join(flags)})" if flags else ""),
    ]
    reasoning = p.get("reasoning")
    if reasoning:
        lines.append(f"  - Reasoning: {cell(reasoning, 300)}")
    elif not p.get("formatted") and p.get("completion"):
        # Without parsed reasoning, the raw completion is what explains an unformatted answer.
        lines.append(f"  - Completion: {cell(p.get('completion'), 300)}")
    return lines


def _cases_section(cases: Sequence[Mapping[str, Any]], images: Mapping[str, str]) -> list[str]:
    """Cases grouped by question type, wrong ones first, each with its image link when there is one."""
    if not cases:
        return []
    out = [
        "## Cases",
        "",
        "A fixed-seed sample of wrong and right answers per question type, each with the image the "
        "model was given (global view with the ROI outlined and its zoomed inset).",
        "",
    ]
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for p in cases:
        by_type.setdefault(str(p.get("question_type")), []).append(p)
    for qtype in sorted(by_type, key=qtype_key):
        out += [f"### {qtype}", ""]
        for label, correct in (("Wrong", False), ("Right", True)):
            shown = [p for p in by_type[qtype] if bool(p.get("correct")) == correct]
            if shown:
                out += [f"#### {label}", ""]
                out += [line for p in shown for line in _example(p, images.get(str(p.get("id"))))] + [""]
    return out


def render_report(
    metrics: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any],
    plots: Mapping[str, str | os.PathLike],
    base_dir: str | os.PathLike | None = None,
    cases: Sequence[Mapping[str, Any]] | None = None,
    images: Mapping[str, str] | None = None,
) -> str:
    """Markdown report of one evaluation run: reproduction info, headline / per-type / per-abnormality tables,
    plots and cases (right and wrong answers per question type, with the image the model saw).

    ``plots`` maps a plot key (e.g. "abnormality_f1", "confusion", "calibration") to its PNG path; paths are
    linked as given, or relative to ``base_dir`` (the report's folder) when that is passed. ``cases``: the
    predictions to show (default: ``pick_cases(predictions)``); ``images``: case id → its image's path relative to
    the report (``evaluation.case_images.write_case_images``).
    """
    name = info.get("name") or "evaluation"
    out: list[str] = [f"# Evaluation report: {name}", ""]
    n_samples = len(predictions) if predictions else info.get("num_samples")
    split, created = info.get("split") or DASH, info.get("created") or DASH
    out += [f"Split `{split}`, {n_samples if n_samples is not None else DASH} samples, created {created}.", ""]

    out += ["## Reproduce", ""]
    if info.get("command"):
        out += ["```bash", str(info["command"]), "```", ""]
    for label, key in [
        ("Model", "model"),
        ("Model path", "model_path"),
        ("Checkpoint", "ckpt_path"),
        ("Split", "split"),
        ("Samples", "num_samples"),
        ("Seed", "seed"),
        ("Data seed", "data_seed"),
    ]:
        value = info.get(key)
        out.append(f"- {label}: " + (f"`{value}`" if value is not None else DASH))
    out.append("")

    acc, chance = as_float(metrics.get("accuracy")), as_float(metrics.get("chance"))
    if math.isnan(chance):
        chance = _chance(predictions)
    headline = [
        ("Accuracy", fmt(acc)),
        ("Chance (uniform over options)", fmt(chance)),
        ("Accuracy − chance", fmt(acc - chance, signed=True)),
        ("Format compliance", fmt(metrics.get("format_rate"))),
        ("Answer validity", fmt(metrics.get("validity_rate"))),
        ("Macro F1 (abnormalities)", fmt(metrics.get("macro_f1"))),
        ("Micro F1 (abnormalities)", fmt(metrics.get("micro_f1"))),
        ("AUROC (presence, P(yes))", fmt(metrics.get("auroc"))),
        ("AUPRC (presence, P(yes))", fmt(metrics.get("auprc"))),
        ("ECE (presence, P(yes))", fmt(metrics.get("ece"))),
        ("BLEU (reasoning)", fmt(metrics.get("bleu"))),
        ("ROUGE-L (reasoning)", fmt(metrics.get("rouge_l"))),
    ]
    out += ["## Headline metrics", "", *markdown_table(["Metric", "Value"], [list(r) for r in headline]), ""]

    qrows = _qtype_rows(metrics, predictions)
    if qrows:
        out += ["## Per question type", ""]
        out += [*markdown_table(["Question type", "n", "Accuracy", "Chance", "Δ"], qrows), ""]

    per_abn = metrics.get("per_abnormality") or {}
    if per_abn:
        rows = []
        # Most frequent labels first: their numbers are the ones to trust.
        for label, s in sorted(per_abn.items(), key=lambda kv: (-_support(kv[1]), kv[0])):
            support = _support(s)
            rows.append(
                [
                    cell(label),
                    fmt(s.get("precision")),
                    fmt(s.get("recall")),
                    fmt(s.get("f1")),
                    DASH if support < 0 else str(support),
                    fmt(s.get("auroc")),
                    fmt(s.get("auprc")),
                ]
            )
        out += ["## Per abnormality", ""]
        out += [*markdown_table(["Abnormality", "Precision", "Recall", "F1", "Support", "AUROC", "AUPRC"], rows), ""]

    if plots:
        out += ["## Plots", ""]
        for key, path in plots.items():
            link = Path(path)
            if base_dir is not None:
                link = Path(os.path.relpath(link, base_dir))
            title = PLOT_TITLES.get(key, key.replace("_", " "))
            out += [f"### {title}", "", f"![{title}]({link.as_posix()})", ""]

    out += _cases_section(pick_cases(predictions) if cases is None else cases, images or {})
    return "\n".join(out).rstrip() + "\n"
