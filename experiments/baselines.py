"""MedReason-R1's comparison table (arXiv 2510.19626): general-purpose and medical VLMs against ours, in one command.

Every model of ``configs/experiments/baselines.yaml`` is evaluated on the same test questions with ``cli.py test
--config configs/eval.yaml --model.init_args.model_path PATH`` (its run folder in ``<out>/runs/<name>``), then the
table of accuracy per question type, their average, overall accuracy, macro F1, AUROC, format and validity rates,
each with a 95 % CI (``evaluation/baseline_table.py``), goes to ``<out>/table.{md,json,csv}``.

    python -m experiments.baselines --config configs/experiments/baselines.yaml
    python -m experiments.baselines --config configs/experiments/baselines.yaml --smoke   # tiny budgets

Each model runs in its own process (its log in ``<out>/logs/<name>.log``): third-party checkpoints, some with
their own code, cannot leave GPU memory or patched classes behind for the next, and a crash costs one row. A model
whose run folder is complete and was made by the same command is skipped, so an interrupted table resumes; a model
that fails is reported in one line and as a "failed" row, and the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from common.files import atomic_write_text
from datamodules.prompts import IMAGE_NOTES
from evaluation.cli_runs import Runner, done_before, run_cli, run_once
from experiments.replicate import deep_merge, write_yaml

log = logging.getLogger("experiments.baselines")
GROUPS = {"general": "General-purpose VLMs", "medical": "Medical VLMs", "ours": "Ours"}
RUN_FILES = ("metrics.json", "predictions.jsonl", "run.json", "report.md")  # report.md: written last
DONE = "baseline.json"  # the command that made the run folder, written after it succeeded
# Zero-shot models never saw our training prompt's format: say it plainly, with the options verbatim.
ZERO_SHOT_INSTRUCTIONS = {
    "think": "First reason step by step inside <think></think>. Then answer with exactly one of the options, "
    "written as given, inside <answer></answer>, and write nothing after it.",
    "no_think": "Answer with exactly one of the options, written as given, inside <answer></answer>, and write "
    "nothing else.",
}
HEADERS = {
    "average": "Average",
    "accuracy": "Overall",
    "macro_f1": "Macro F1",
    "auroc": "AUROC",
    "format_rate": "Format",
    "validity_rate": "Validity",
}


@dataclass
class Baseline:
    """One row of the table: a Hugging Face model directory (downloaded, or our export) and how to prompt it."""

    name: str  # row label and run folder name
    path: str  # model directory (model_path of lightning_modules.evaluator.VQAEvaluator)
    group: Literal["general", "medical", "ours"]
    prompt_format: Literal["think", "no_think"] | None = None  # null: the data file's
    system_prompt: str | None = None  # null: zero-shot instructions (general, medical); the training prompt (ours)
    max_new_tokens: int | None = None  # null: eval.yaml's
    trust_remote_code: bool = False  # the model directory's own code may run (HuatuoGPT-Vision)
    batch_size: int | None = None  # questions per generation batch (data.eval_batch_size); null: the data file's
    overrides: list[str] = field(default_factory=list)  # further cli.py arguments, e.g. ["--trainer.precision", …]
    tiny_family: str | None = None  # build this family's tiny offline model at ``path`` if missing (models/tiny)


@dataclass
class BaselineTable:
    """The spec of ``configs/experiments/baselines.yaml``: the models, and what every one of them shares."""

    models: list[Baseline]
    eval_config: str = "configs/eval.yaml"
    data: str | None = None  # data file laid over eval.yaml's (``--data``); null: eval.yaml's own
    out: str = "runs/baselines"
    split: dict[str, Any] = field(default_factory=dict)  # data settings every model gets: which questions
    defaults: dict[str, Any] = field(default_factory=dict)  # per-model settings where a model gives none
    every_model: dict[str, Any] = field(default_factory=dict)  # laid over every model's own (--smoke budgets)
    n_boot: int = 1000
    seed: int = 0

    def settings(self, model: Baseline) -> Baseline:
        """A model's settings: ``defaults`` under its own, ``every_model`` over them; ``overrides`` in that order."""
        own = {k: v for k, v in asdict(model).items() if v is not None}
        layers = (self.defaults, own, self.every_model)
        overrides = [arg for layer in layers for arg in layer.get("overrides", [])]  # these add up
        return Baseline(**{**self.defaults, **own, **self.every_model, "overrides": overrides})

    def data_settings(self) -> dict[str, Any]:
        """The data settings the evaluation sees, read from YAML: eval.yaml's data (a file is found from the
        config's folder, as cli.py finds it), ``data`` over it, ``split`` over both."""
        config = Path(self.eval_config)
        named = yaml.safe_load(config.read_text()).get("data")
        layers = [yaml.safe_load((config.parent / named).read_text()) if isinstance(named, str) else named]
        layers += [yaml.safe_load(Path(self.data).read_text())] if self.data else []
        layers = [(layer or {}).get("init_args", layer or {}) for layer in layers]
        return deep_merge({}, *layers, self.split)


def load_table(paths: list[str], smoke: bool) -> BaselineTable:
    """The table spec: YAML files merged in order (``models`` lists are replaced), then ``smoke`` when set."""
    spec: dict[str, Any] = {}
    for path in paths:
        spec = deep_merge(spec, yaml.safe_load(Path(path).read_text()) or {})
    smoke_part = spec.pop("smoke", {})
    if smoke:
        spec = deep_merge(spec, smoke_part)
    known = {f.name for f in fields(Baseline)}
    models = []
    for i, entry in enumerate(spec.pop("models", None) or []):
        if unknown := set(entry) - known:
            raise ValueError(f"models[{i}]: unknown key(s) {sorted(unknown)} (known: {sorted(known)})")
        model = Baseline(**entry)
        if model.group not in GROUPS:
            raise ValueError(f"models[{i}] {model.name!r}: group must be one of {list(GROUPS)}, not {model.group!r}")
        if not model.name or re.search(r"[/\\]", model.name) or model.name.startswith("."):
            raise ValueError(f"models[{i}]: name {model.name!r} must be a plain folder name")
        models.append(model)
    if unknown := (set(spec.get("defaults", {})) | set(spec.get("every_model", {}))) - known:
        raise ValueError(f"defaults / every_model: unknown key(s) {sorted(unknown)} (known: {sorted(known)})")
    names = [m.name for m in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"need at least one model, with unique names (got {names})")
    return BaselineTable(models=models, **spec)


def zero_shot_prompt(data: dict[str, Any], prompt_format: str) -> str:
    """The system prompt of a zero-shot model: the training prompt's task and image description, the answer
    format spelled out (``datamodules/prompts.py`` phrases it for trained models)."""
    zoom = data.get("zoom")
    layout = "none" if zoom is None else zoom.get("layout", "inset")
    return (
        f"You are a radiologist reading a chest CT slice. {IMAGE_NOTES[layout]} {ZERO_SHOT_INSTRUCTIONS[prompt_format]}"
    )


def command(table: BaselineTable, model: Baseline) -> tuple[list[str], dict[str, Any]]:
    """The ``cli.py test`` arguments of one model and its overlay config (settings → data / model keys)."""
    m = table.settings(model)
    data = table.data_settings()
    prompt_format = m.prompt_format or data.get("prompt_format", "think")
    system_prompt = m.system_prompt
    if system_prompt is None and m.group != "ours":
        system_prompt = zero_shot_prompt(data, prompt_format)
    overlay_data = {**table.split, "prompt_format": prompt_format, "system_prompt": system_prompt}
    if m.batch_size is not None:
        overlay_data["eval_batch_size"] = m.batch_size
    # <out>/runs is this command's own: a changed entry replaces its folder (evaluate() says so in the log).
    report = {"out_dir": str(Path(table.out) / "runs"), "name": m.name, "overwrite": True}
    overlay = {
        "data": overlay_data,
        "trainer": {
            "enable_progress_bar": False,  # the log is a file
            "callbacks": [{"class_path": "evaluation.callbacks.EvaluationReport", "init_args": report}],
        },
    }
    if m.max_new_tokens is not None:
        overlay["model"] = {"init_args": {"max_new_tokens": m.max_new_tokens}}
    args = ["test", "--config", table.eval_config, *(["--data", table.data] if table.data else [])]
    args += ["--config", str(Path(table.out) / "configs" / f"{m.name}.yaml"), "--model.init_args.model_path", m.path]
    if m.trust_remote_code:  # only when asked: older evaluators have no such argument
        args += ["--model.init_args.trust_remote_code", "true"]
    return args + list(m.overrides), overlay


def evaluate(table: BaselineTable, model: Baseline, runner: Runner = run_cli) -> str | None:
    """Evaluate one model into ``<out>/runs/<name>`` unless done before by the same command; None, or the error.
    ``runner`` runs ``cli.py`` (``run_cli``: a process per model)."""
    out = Path(table.out)
    run_dir, log_path = out / "runs" / model.name, out / "logs" / f"{model.name}.log"
    args, overlay = command(table, model)
    record = {"command": args, "overlay": overlay}
    if done_before(model.name, run_dir, DONE, record, RUN_FILES):
        return None
    if model.tiny_family and not Path(model.path).exists():
        from models.tiny.builders import build_tiny

        log.info("%s: building the tiny %s model at %s", model.name, model.tiny_family, model.path)
        build_tiny(model.tiny_family, Path(model.path))
    if not Path(model.path).exists() and "--model.init_args.build_embedded_if_missing" not in args:
        return f"model directory {model.path} does not exist (download it, or correct its path)"
    write_yaml(out / "configs" / f"{model.name}.yaml", overlay)
    log.info("%s: evaluating %s (log: %s)", model.name, model.path, log_path)
    return run_once(args, run_dir, log_path, DONE, record, RUN_FILES, runner)


def table_rows(table: BaselineTable, errors: dict[str, str | None]) -> list[dict[str, Any]]:
    """The table's rows, grouped (``GROUPS`` order, then the spec's): numbers with CIs, or the failure."""
    from evaluation.baseline_table import bootstrap_table_row, mismatches

    rows = []
    for model in sorted(table.models, key=lambda m: list(GROUPS).index(m.group)):
        run_dir = Path(table.out) / "runs" / model.name
        row: dict[str, Any] = {"name": model.name, "group": model.group, "path": model.path, "run_dir": str(run_dir)}
        if errors.get(model.name):
            rows.append({**row, "status": "failed", "error": errors[model.name]})
            continue
        text = (run_dir / "predictions.jsonl").read_text(encoding="utf-8")
        predictions = [json.loads(line) for line in text.splitlines() if line.strip()]
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        stats = bootstrap_table_row(predictions, table.n_boot, table.seed)
        bad = mismatches(stats, json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")))
        row |= {"status": "ok", "n": len(predictions), "sample_ids_sha256": info.get("sample_ids_sha256")}
        rows.append({**row, "metrics": stats, **({"error": "; ".join(bad)} if bad else {})})
    return rows


def problems(rows: list[dict[str, Any]]) -> list[str]:
    """Why the table is not to be trusted as it is: failed rows, checks that failed, different questions."""
    out = [f"{r['name']}: {r['error']}" for r in rows if r.get("error")]
    if len({r["sample_ids_sha256"] for r in rows if r["status"] == "ok"}) > 1:
        out.append("the models were not evaluated on the same questions (run.json: sample_ids_sha256 differ)")
    return out


def render_markdown(table: BaselineTable, rows: list[dict[str, Any]]) -> str:
    """The paper-style table: groups as section rows, each number with its CI, the method in the footer."""
    from evaluation.baseline_table import columns
    from evaluation.formatting import DASH, cell, fmt, markdown_table

    types = {k.split("/", 1)[1] for r in rows for k in r.get("metrics", {}) if k.startswith("accuracy/")}
    cols = columns(types)
    header = ["Model", *[HEADERS.get(c, c.split("/", 1)[-1].capitalize()) for c in cols], "n"]
    lines_rows = []
    for group, title in GROUPS.items():
        members = [r for r in rows if r["group"] == group]
        if members:
            lines_rows.append([f"**{title}**", *[""] * (len(header) - 1)])
        for r in members:
            if r["status"] == "failed":
                lines_rows.append([cell(r["name"]), "failed", *[DASH] * (len(header) - 2)])
                continue
            m = r["metrics"]
            values = [
                f"{fmt(m[c]['value'])} [{fmt(m[c]['low'])}, {fmt(m[c]['high'])}]" if c in m else DASH for c in cols
            ]
            lines_rows.append([cell(r["name"]), *values, str(r["n"])])
    lines = ["# Comparison table: CT-RATE-VQA test split", "", *markdown_table(header, lines_rows), ""]
    lines += [
        f"Fractions, each with its 95 % CI [low, high]: percentile bootstrap over questions ({table.n_boot} resamples,"
        f" seed {table.seed}; every model evaluated on the same questions gets the same resamples). Per-type columns:"
        " accuracy on that question type; Average: their mean (the paper's average); Overall: accuracy over all "
        "questions; Macro F1: per-abnormality F1 from the presence questions (an answer other than yes counts as not"
        " detected), averaged over the abnormalities that occur; AUROC: of p(yes) on the presence questions; Format /"
        " Validity: share of answers in the prompt's format / naming an option. n: questions. Point estimates are "
        "recomputed from each run's predictions.jsonl and checked against its metrics.json.",
        "",
    ]
    issues = problems(rows)
    if issues:
        lines += ["**Problems**", "", *[f"- {cell(p)}" for p in issues], ""]
    lines += ["Run folders: " + ", ".join(f"`{r['run_dir']}`" for r in rows if r["status"] == "ok"), ""]
    return "\n".join(lines)


def render_csv(rows: list[dict[str, Any]]) -> str:
    """One line per model: value, low and high of every column, status and error."""
    cols = list(dict.fromkeys(c for r in rows for c in r.get("metrics", {})))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["group", "name", "status", "n", *[f"{c}{s}" for c in cols for s in ("", "_low", "_high")], "error"]
    )
    for r in rows:
        m = r.get("metrics", {})
        numbers = [m[c][k] if c in m else "" for c in cols for k in ("value", "low", "high")]
        writer.writerow([r["group"], r["name"], r["status"], r.get("n", ""), *numbers, r.get("error", "")])
    return out.getvalue()


def write_table(table: BaselineTable, rows: list[dict[str, Any]]) -> Path:
    """``<out>/table.md``, ``table.json`` and ``table.csv``, each written atomically; returns table.md's path."""
    from evaluation.formatting import json_safe

    out = Path(table.out)
    ci = {"method": "percentile bootstrap over questions", "n_boot": table.n_boot, "seed": table.seed}
    summary = {"confidence": 0.95, "ci": ci, "groups": GROUPS, "rows": rows, "problems": problems(rows)}
    atomic_write_text(out / "table.json", json.dumps(json_safe(summary), indent=2) + "\n")
    atomic_write_text(out / "table.csv", render_csv(rows))
    return atomic_write_text(out / "table.md", render_markdown(table, rows))


def run(table: BaselineTable, runner: Runner = run_cli) -> tuple[Path, list[dict[str, Any]]]:
    """Every model, then the table: (table.md, its rows)."""
    errors = {}
    for model in table.models:
        errors[model.name] = evaluate(table, model, runner)
        if errors[model.name]:
            log.error("%s failed: %s", model.name, errors[model.name])
    rows = table_rows(table, errors)
    return write_table(table, rows), rows


def main(argv: list[str] | None = None) -> int:
    """CLI: evaluate, tabulate, print the table; status 1 when a model failed or a check did not hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="table YAML (several merge in order)")
    parser.add_argument("--smoke", action="store_true", help="apply the spec's smoke section: tiny budgets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table = load_table(args.config, args.smoke)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    path, rows = run(table)
    print(path.read_text(encoding="utf-8"))
    print(f"comparison table: {path}")
    return 1 if problems(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
