"""Compare evaluation run folders side by side: group by run name, mean ± sample std over seeds, and for each pair of
groups evaluated on the same questions the paired accuracy difference with its 95 % CI and exact p-value
(``evaluation/paired.py``).

Usage: ``python -m evaluation.compare RUN_DIR [RUN_DIR ...] --out DIR``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from evaluation.formatting import as_float, fmt, json_safe, markdown_table, qtype_key
from evaluation.paired import ALPHA, compare_arms

METRICS_FILE = "metrics.json"
INFO_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"


def _read_json(run_dir: Path, name: str) -> dict[str, Any]:
    path = run_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"run folder {run_dir}: missing {name} (expected {path})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"run folder {run_dir}: {name} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"run folder {run_dir}: {name} must hold a JSON object, got {type(data).__name__}")
    return data


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read one run folder: ``{"dir": Path, "metrics": metrics.json, "info": run.json}``.

    Raises FileNotFoundError (folder or file missing) or ValueError (bad JSON), naming the folder and the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist or is not a folder")
    return {"dir": run_dir, "metrics": _read_json(run_dir, METRICS_FILE), "info": _read_json(run_dir, INFO_FILE)}


def _flat_numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flat numeric entries (null → NaN); nested tables such as per_abnormality / calibration are skipped."""
    out = {}
    for k, v in metrics.items():
        if v is None or (isinstance(v, int | float) and not isinstance(v, bool)):
            out[k] = as_float(v)
    return out


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; 0.0 for one value) and count over the non-NaN values; NaNs when none."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group runs (from :func:`load_run`) by ``info["name"]`` in first-seen order and summarise each flat metric.

    Each group: ``{"name", "n_runs", "seeds", "run_dirs", "metrics": {metric: {"mean", "std", "n"}}}`` where
    ``n`` counts the runs with a non-NaN value (a run lacking the metric counts as NaN).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        # Fall back to the folder name so unnamed runs are not merged together.
        name = str(run["info"].get("name") or Path(run.get("dir", "run")).name)
        groups.setdefault(name, []).append(run)

    result = []
    for name, members in groups.items():
        flats = [_flat_numeric(r["metrics"]) for r in members]
        keys: list[str] = []
        for flat in flats:
            keys += [k for k in flat if k not in keys]
        summary = {}
        for key in keys:
            mean, std, n = _mean_std(flat.get(key, math.nan) for flat in flats)
            summary[key] = {"mean": mean, "std": std, "n": n}
        result.append(
            {
                "name": name,
                "n_runs": len(members),
                "seeds": [r["info"].get("seed") for r in members],
                "run_dirs": [str(r.get("dir", "")) for r in members],
                "metrics": summary,
            }
        )
    return result


def headline_metrics(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """Default comparison columns: accuracy, per-type accuracies present, format/validity rate, macro F1, AUROC.

    Columns no group has are dropped (accuracy is always kept).
    """
    present = {k for g in groups for k in g["metrics"]}
    qtypes = sorted(
        (k.split("/", 1)[1] for k in present if k.startswith("accuracy/")),
        key=qtype_key,
    )
    names = ["accuracy", *[f"accuracy/{q}" for q in qtypes], "format_rate", "validity_rate", "macro_f1", "auroc"]
    return [m for m in names if m == "accuracy" or m in present]


def format_stat(stat: Mapping[str, Any] | None, n_runs: int) -> str:
    """ "0.812 ± 0.013 (n=3)"; "0.812" for a single run; "–" when missing or all NaN."""
    if not stat or not math.isfinite(as_float(stat.get("mean"))):
        return fmt(None)
    n = int(stat.get("n", 1))
    if n_runs <= 1:
        return fmt(stat["mean"])
    if n == 1:
        # Only one of several runs had a value: a std of 0 would overstate certainty.
        return f"{fmt(stat['mean'])} (n=1)"
    return f"{fmt(stat['mean'])} ± {fmt(stat.get('std'))} (n={n})"


def render_comparison(groups: Sequence[Mapping[str, Any]], metric_names: Sequence[str] | None = None) -> str:
    """Markdown table (rows = groups, columns = headline metrics) plus one line per group naming its runs/seeds."""
    metric_names = list(metric_names) if metric_names is not None else headline_metrics(groups)
    rows = [
        [str(g["name"]).replace("|", "\\|"), *[format_stat(g["metrics"].get(m), g["n_runs"]) for m in metric_names]]
        for g in groups
    ]
    lines = markdown_table(["Run", *metric_names], rows)
    lines.append("")
    for g in groups:
        runs = ", ".join(
            f"`{d}` (seed {'–' if s is None else s})" for d, s in zip(g["run_dirs"], g["seeds"], strict=True)
        )
        lines.append(f"- **{g['name']}**: {g['n_runs']} run{'s' if g['n_runs'] != 1 else ''}: {runs}")
    return "\n".join(lines) + "\n"


def _predictions(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run folder {run_dir}: missing {PREDICTIONS_FILE} (expected {path})")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def paired_comparisons(groups: Sequence[Mapping[str, Any]], n_boot: int = 10_000) -> list[dict[str, Any]]:
    """For each pair of groups (earlier = A, later = B), B − A paired by seed and question (``compare_arms``):
    ``{"a", "b", "results": {"all" | question type: PairedResult.as_dict()}}``, or ``"skipped": reason`` when
    the two were not run on common seeds and the same questions."""
    runs: list[dict[Any, list[dict[str, Any]]] | str] = []
    for g in groups:
        try:
            runs.append({seed: _predictions(d) for seed, d in zip(g["seeds"], g["run_dirs"], strict=True)})
        except FileNotFoundError as e:
            runs.append(str(e))
    out = []
    for i, first in enumerate(groups):
        for j in range(i + 1, len(groups)):
            pair: dict[str, Any] = {"a": first["name"], "b": groups[j]["name"]}
            a, b = runs[i], runs[j]
            try:
                if isinstance(a, str) or isinstance(b, str):
                    raise ValueError(a if isinstance(a, str) else b)
                pair["results"] = {k: r.as_dict() for k, r in compare_arms(a, b, n_boot).items()}
            except ValueError as e:
                pair["skipped"] = str(e)
            out.append(pair)
    return out


def render_paired(pairs: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the paired differences: one row per pair and question type, significant ones marked."""
    rows = []
    for pair in pairs:
        label = f"{pair['b']} − {pair['a']}".replace("|", "\\|")
        if "skipped" in pair:
            rows.append([label, "–", "–", "–", "–", f"not paired: {pair['skipped']}"])
            continue
        for qtype, r in pair["results"].items():
            ci = f"[{fmt(r['ci_low'], signed=True)}, {fmt(r['ci_high'], signed=True)}]"
            mark = "*" if r["significant"] else ""
            p = f"{r['p_value']:.2g}"
            rows.append([label, qtype, f"{fmt(r['difference'], signed=True)}{mark}", ci, p, str(r["n_seeds"])])
    lines = markdown_table(["B − A", "questions", "Δ accuracy", "95 % CI", "p", "seeds"], rows)
    note = (
        f"\n\\* p < {ALPHA} and a 95 % CI that excludes 0. p: exact paired sign-flip test over questions (McNemar's "
        "exact test with one seed); CI: bootstrap over seeds and questions (evaluation/paired.py), so it also covers "
        "seed-to-seed variation. Seeds pair by their number, questions by id.\n"
    )
    return "\n".join(lines) + "\n" + note


def write_comparison(
    run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, metric_names: Sequence[str] | None = None
) -> Path:
    """Write comparison.md, comparison.json (aggregated groups), paired.json (``paired_comparisons``) and
    comparison.png into ``out_dir``, each atomically.

    Returns the path of comparison.md.
    """
    return write_groups(aggregate([load_run(d) for d in run_dirs]), out_dir, metric_names)


def write_groups(
    groups: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, metric_names: Sequence[str] | None = None
) -> Path:
    """Write the three comparison files for already aggregated ``groups``; returns the comparison.md path."""
    from evaluation.comparison_plot import plot_comparison  # matplotlib only when a figure is actually drawn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"name": g["name"], "metrics": {m: (s["mean"], s["std"]) for m, s in g["metrics"].items()}} for g in groups]
    png = plot_comparison(rows, out_dir / "comparison.png")
    atomic_write_text(out_dir / "comparison.json", json.dumps(json_safe(list(groups)), indent=2) + "\n")
    pairs = paired_comparisons(groups)
    atomic_write_text(out_dir / "paired.json", json.dumps(json_safe(pairs), indent=2) + "\n")
    md = "# Run comparison\n\n" + render_comparison(groups, metric_names) + f"\n![Run comparison]({png.name})\n"
    if pairs:
        md += "\n## Paired differences\n\n" + render_paired(pairs)
    return atomic_write_text(out_dir / "comparison.md", md)


def print_comparison(groups: Sequence[Mapping[str, Any]], metric_names: Sequence[str] | None = None) -> None:
    """The comparison as a rich table in the terminal: one row per group, metrics transposed to rows when many."""
    from rich.console import Console
    from rich.table import Table

    metric_names = list(metric_names) if metric_names is not None else headline_metrics(groups)
    # Metrics as rows, runs as columns: a dozen metric names do not fit across a terminal, a few runs do.
    table = Table(title="Run comparison (mean ± std over runs of one name)")
    table.add_column("metric")
    for g in groups:
        table.add_column(f"{g['name']} (n={g['n_runs']})", justify="right")
    for m in metric_names:
        table.add_row(
            m, *[format_stat(g["metrics"].get(m), g["n_runs"]).replace(f" (n={g['n_runs']})", "") for g in groups]
        )
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: aggregate run folders, write the comparison files into ``--out``, print the table and the path."""

    parser = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="evaluation run folders (metrics.json + run.json)")
    parser.add_argument("--out", required=True, type=Path, help="folder for comparison.md/.json/.png")
    args = parser.parse_args(argv)

    try:
        groups = aggregate([load_run(d) for d in args.run_dirs])
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))  # a usage problem, not a crash: message + exit code 2, no traceback
    md_path = write_groups(groups, args.out)
    print_comparison(groups)
    pairs = json.loads((args.out / "paired.json").read_text(encoding="utf-8"))
    if pairs:
        print(render_paired(pairs))
    print(f"wrote {md_path}")
    return md_path


if __name__ == "__main__":
    main()
