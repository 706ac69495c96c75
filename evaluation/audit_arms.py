"""The visual-reliance audit of several arms over paired seeds (the replication's ``audit:`` section): per arm and
condition, accuracy and p(yes) AUROC as mean ± sample std over seeds, and the paired accuracy difference to the
arm's own ``original`` pooled over seeds and questions (``evaluation/paired.py``: crossed seed × question bootstrap
CI, exact sign-flip p).

Input: one audit folder per arm and seed (``evaluation/audit.py``'s ``<out>``: ``table.json`` and
``runs/<condition>/predictions.jsonl``). Output: ``audit.json`` and ``audit.md`` in the comparison folder.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from evaluation.audit import read_run
from evaluation.audit_report import delta_cells, problem_lines
from evaluation.formatting import as_float, fmt, json_safe, markdown_table
from evaluation.paired import compare_arms


def _mean_std(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    return {"mean": mean, "std": statistics.stdev(finite) if len(finite) > 1 else math.nan, "n": len(finite)}


def summarize_arms(audits: Mapping[str, Mapping[int, Path]], n_boot: int = 10_000) -> dict[str, Any]:
    """{arm: {seed: audit folder}} → per arm and condition (in the audits' order): accuracy and AUROC over seeds,
    the per-seed differences to ``original`` and their pooled paired statistics. A condition that failed on some
    seed is reported on the seeds where it ran, and named under ``problems``."""
    rows, problems = [], []
    for arm, by_seed in audits.items():
        tables = {
            seed: json.loads((folder / "table.json").read_text(encoding="utf-8")) for seed, folder in by_seed.items()
        }
        problems += [f"{arm}, seed {seed}: {p}" for seed, table in tables.items() for p in table["problems"]]
        conditions = list(dict.fromkeys(r["condition"] for table in tables.values() for r in table["rows"]))
        ok = {seed: {r["condition"]: r for r in table["rows"] if r["status"] == "ok"} for seed, table in tables.items()}
        original = {s: read_run(by_seed[s] / "runs" / "original")["predictions"] for s in ok if "original" in ok[s]}
        for condition in conditions:
            seeds = [s for s in ok if condition in ok[s]]
            metric = {
                k: [as_float(ok[s][condition]["metrics"][k]["value"]) for s in seeds] for k in ("accuracy", "auroc")
            }
            row: dict[str, Any] = {
                "arm": arm,
                "condition": condition,
                "seeds": seeds,
                "accuracy": _mean_std(metric["accuracy"]),
                "auroc": _mean_std(metric["auroc"]),
                "difference_per_seed": [ok[s][condition]["paired_vs_original"]["all"]["difference"] for s in seeds],
                "paired_vs_original": None,
            }
            if condition != "original" and seeds:
                runs = {s: read_run(by_seed[s] / "runs" / condition)["predictions"] for s in seeds}
                row["paired_vs_original"] = compare_arms(original, runs, n_boot)["all"].as_dict()
            rows.append(row)
    return {"confidence": 0.95, "n_boot": n_boot, "rows": rows, "problems": problems}


def render_arms(summary: Mapping[str, Any]) -> str:
    """audit.md: one row per arm and condition."""
    header = ["Arm", "Condition", "Accuracy", "Δ vs original [95 % CI]", "p", "Δ per seed", "AUROC p(yes)"]
    body = []
    for r in summary["rows"]:
        paired = r["paired_vs_original"]
        delta, p = delta_cells(paired)
        per_seed = ", ".join(fmt(d, signed=True) for d in r["difference_per_seed"]) if paired else "–"
        stats = [f"{fmt(r[k]['mean'])} ± {fmt(r[k]['std'])}" for k in ("accuracy", "auroc")]
        body.append([r["arm"], r["condition"], stats[0], delta, p, per_seed, stats[1]])
    lines = ["# Visual-reliance audit of every arm", "", *markdown_table(header, body), ""]
    lines += [
        "Accuracy and AUROC: mean ± sample std over seeds. Δ: accuracy under the condition minus the same arm's "
        "`original`, paired by seed and question and pooled over seeds (95 % crossed seed × question bootstrap CI; "
        "p: exact sign-flip test; * p < 0.05 and a CI that excludes 0). Each seed's own audit: "
        "`seed<s>/audit/<arm>/report.md`.",
        "",
    ]
    return "\n".join(lines + problem_lines(summary["problems"]))


def write_arms(summary: Mapping[str, Any], out_dir: Path) -> Path:
    """audit.json and audit.md into ``out_dir``; returns audit.md's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "audit.json", json.dumps(json_safe(summary), indent=2) + "\n")
    return atomic_write_text(out_dir / "audit.md", render_arms(summary))
