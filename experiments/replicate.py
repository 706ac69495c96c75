"""Small-scale replication of MedReason-R1's ablation on the embedded default, in one command.

For every seed, each arm of ``configs/experiments/replication.yaml`` is trained with the normal configs (SFT or
GRPO, through ``cli.py``'s own entry point), exported, and evaluated with ``configs/eval.yaml`` on each of the
spec's ``evaluations`` (default: the test split); then each evaluation's run folders go into one comparison report
(mean ± std over seeds, paired differences between arms). An arm that starts from another arm's model (GRPO after
SFT) validates that start first, and its export is the start unless training beat it on validation
(``ResumableCheckpoint(start_candidate)``).

    python -m experiments.replicate --config configs/experiments/replication.yaml
    python -m experiments.replicate --config configs/experiments/replication.yaml --smoke   # a minute: tiny budgets

Everything an arm ran with is written next to its results (``<out>/seed<s>/<arm>/{fit,eval-*}.yaml``), and a
finished arm is skipped when the command is run again, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.files import atomic_write_text

log = logging.getLogger("experiments.replicate")
DONE = "done.json"
CHECKPOINT = "training.checkpointing.ResumableCheckpoint"
AUDIT_DEFAULTS: dict[str, Any] = {"conditions": ["original", "blank", "shuffled"], "n_boot": 1000, "n_cases": 2,
                                  "cam_checkpoint": None}  # fmt: skip


def deep_merge(base: dict[str, Any], *overlays: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` updated by each overlay in turn; nested dicts merge, anything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for overlay in overlays:
        for key, value in (overlay or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


@dataclass
class Arm:
    """One row of the comparison: a training stage with its own overrides, optionally started from another arm."""

    name: str
    stage: str  # "sft" or "grpo"
    init_from: str | None = None  # arm whose exported model this one starts from (GRPO after SFT)
    data: dict[str, Any] = field(default_factory=dict)  # datamodule overrides (also used to evaluate it)
    overrides: dict[str, Any] = field(default_factory=dict)  # overrides of the stage's config


@dataclass
class Experiment:
    out_dir: Path
    seeds: list[int]
    stages: dict[str, dict[str, Any]]  # stage -> {config: path, overrides: {...}}; "eval" evaluates every arm
    data: dict[str, Any]
    arms: list[Arm]
    init_model: dict[str, Any]
    report_metrics: list[str] | None = None  # comparison columns (default: evaluation.compare's headline)
    # The visual-reliance audit of every arm's export on the main test set, per seed (evaluation/audit.py):
    # {conditions: [...], n_boot, n_cases, cam_checkpoint}, defaults filled in (AUDIT_DEFAULTS); None: no audit.
    audit: dict[str, Any] | None = None
    # Test sets every arm is evaluated on: name -> data overrides. "test" (else the first) is the main one, with
    # run folders in seed<s>/eval/ and its comparison in comparison/; another in seed<s>/eval-<name>/ and
    # comparison-<name>/.
    evaluations: dict[str, dict[str, Any]] = field(default_factory=lambda: {"test": {}})

    @property
    def main_evaluation(self) -> str:
        return "test" if "test" in self.evaluations else next(iter(self.evaluations))

    def eval_dir(self, seed: int, evaluation: str) -> Path:
        """Where one evaluation's run folders of one seed go."""
        main = evaluation == self.main_evaluation
        return self.out_dir / f"seed{seed}" / ("eval" if main else f"eval-{evaluation}")

    def comparison_dir(self, evaluation: str) -> Path:
        main = evaluation == self.main_evaluation
        return self.out_dir / ("comparison" if main else f"comparison-{evaluation}")

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ValueError(f"arm {name!r} is not defined (arms: {', '.join(a.name for a in self.arms)})")

    def arm_data(self, arm: Arm) -> dict[str, Any]:
        """An arm's data settings: the common ones, its parent's (a GRPO arm sees what its SFT saw), its own."""
        parent = self.arm_data(self.arm(arm.init_from)) if arm.init_from else self.data
        return deep_merge(parent, arm.data)


def load_experiment(paths: list[str], smoke: bool) -> Experiment:
    """The experiment spec: YAML files merged in order, then their ``smoke`` section when ``smoke`` is set."""
    spec: dict[str, Any] = {}
    for path in paths:
        spec = deep_merge(spec, yaml.safe_load(Path(path).read_text()) or {})
    if smoke:
        spec = deep_merge(spec, spec.get("smoke", {}))
    arms = [Arm(**a) for a in spec["arms"]]
    for where, overrides in [
        *((f"stages.{k}", v.get("overrides", {})) for k, v in spec["stages"].items()),
        *((f"arm {a.name}", a.overrides) for a in arms),
    ]:
        # The runner sets each run's callbacks and logger (checkpoints, reports); merged lists would be replaced.
        if {"callbacks", "logger"} & set(overrides.get("trainer", {})):
            raise ValueError(f"{where}: trainer.callbacks / trainer.logger are set by the runner, not overridable")
    for arm in arms:
        if arm.stage not in ("sft", "grpo"):
            raise ValueError(f"arm {arm.name!r}: stage must be sft or grpo, not {arm.stage!r}")
    exp = Experiment(
        out_dir=Path(spec["out_dir"]),
        seeds=[int(s) for s in spec["seeds"]],
        stages=spec["stages"],
        data=spec.get("data", {}),
        arms=arms,
        init_model=spec.get("init_model", {}),
        report_metrics=spec.get("report_metrics"),
        evaluations=spec.get("evaluations") or {"test": {}},
        audit=None if spec.get("audit") is None else {**AUDIT_DEFAULTS, **spec["audit"]},
    )
    if exp.audit is not None:
        from evaluation.audit import CONDITIONS, original_first

        unknown = set(exp.audit["conditions"]) - set(CONDITIONS)
        if unknown or set(exp.audit) - set(AUDIT_DEFAULTS):
            raise ValueError(
                f"audit: conditions must be among {', '.join(CONDITIONS)} (unknown: {sorted(unknown)}); "
                f"keys: {', '.join(AUDIT_DEFAULTS)}"
            )
        exp.audit["conditions"] = original_first(exp.audit["conditions"] or AUDIT_DEFAULTS["conditions"])
    for arm in arms:
        if arm.init_from:
            exp.arm(arm.init_from)
    return exp


def write_yaml(path: Path, config: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _fit_overlay(exp: Experiment, arm: Arm, seed: int, arm_dir: Path, model_path: Path) -> dict[str, Any]:
    stage = exp.stages[arm.stage]
    run = {
        "seed_everything": seed,
        "model": {"init_args": {"model_path": str(model_path), "build_embedded_if_missing": False}},
        "data": {**exp.arm_data(arm), "seed": seed},
        "trainer": {
            "default_root_dir": str(arm_dir),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(arm_dir), "name": "logs"},
            },
            "callbacks": [
                {
                    "class_path": CHECKPOINT,
                    "init_args": {
                        "dirpath": str(arm_dir / "checkpoints"),
                        "filename": "best-{step}",
                        "monitor": "val/accuracy",
                        "mode": "max",
                        # An arm that continues another's model exports that start unless it beat it on validation.
                        "start_candidate": arm.init_from is not None,
                    },
                },
                {  # the resume point of an interrupted arm
                    "class_path": CHECKPOINT,
                    "init_args": {
                        "dirpath": str(arm_dir / "checkpoints"),
                        "every_n_train_steps": 10,
                        "save_top_k": 0,
                        "save_last": True,
                    },
                },
            ],
        },
    }
    if arm.stage == "grpo":
        run["model"]["init_args"]["generation"] = {"sampling_seed": seed}  # the sampler varies with the seed too
    return deep_merge(stage.get("overrides", {}), arm.overrides, run)


def _eval_overlay(exp: Experiment, arm: Arm, seed: int, evaluation: str, arm_dir: Path) -> dict[str, Any]:
    run = {
        "seed_everything": seed,
        "model": {"init_args": {"model_path": str(arm_dir / "model")}},
        "data": deep_merge(exp.arm_data(arm), exp.evaluations[evaluation]),  # the arm's settings, that test set
        "trainer": {
            "default_root_dir": str(arm_dir),  # not the eval folder: only run folders belong there
            "callbacks": [
                {
                    "class_path": "evaluation.callbacks.EvaluationReport",
                    "init_args": {"out_dir": str(exp.eval_dir(seed, evaluation)), "name": arm.name},
                }
            ],
        },
    }
    return deep_merge(exp.stages["eval"].get("overrides", {}), run)


def run_arm(exp: Experiment, arm: Arm, seed: int) -> dict[str, Path]:
    """Train, export and evaluate one arm for one seed; returns its run folder per evaluation. Skips finished arms."""
    from cli import main as cli

    seed_dir = exp.out_dir / f"seed{seed}"
    arm_dir = seed_dir / arm.name
    eval_dirs = {evaluation: exp.eval_dir(seed, evaluation) / arm.name for evaluation in exp.evaluations}
    if (arm_dir / DONE).is_file():
        log.info("seed %d, %s: done before, skipped", seed, arm.name)
        return eval_dirs
    start = time.perf_counter()
    model_path = seed_dir / arm.init_from / "model" if arm.init_from else _init_model(exp, seed_dir, seed)
    base = exp.stages[arm.stage]["config"]
    fit = write_yaml(arm_dir / "fit.yaml", _fit_overlay(exp, arm, seed, arm_dir, model_path))
    log.info("seed %d, %s: %s from %s", seed, arm.name, arm.stage, model_path)
    if arm.init_from is not None:  # the starting model's validation score: `best` below is the start unless beaten
        cli(["validate", "--config", base, "--config", fit])
    cli(["fit", "--config", base, "--config", fit, "--ckpt_path", "last"])  # an interrupted arm resumes
    cli(["export", "--config", base, "--config", fit, "--ckpt_path", "best", "--out_dir", str(arm_dir / "model")])
    for evaluation in exp.evaluations:
        overlay = _eval_overlay(exp, arm, seed, evaluation, arm_dir)
        config = write_yaml(arm_dir / f"eval-{evaluation}.yaml", overlay)
        cli(["test", "--config", exp.stages["eval"]["config"], "--config", config])
    seconds = time.perf_counter() - start
    done = {"seconds": round(seconds, 1), "eval": {k: str(v) for k, v in eval_dirs.items()}}
    atomic_write_text(arm_dir / DONE, json.dumps(done) + "\n")
    log.info("seed %d, %s: finished in %.0f s", seed, arm.name, seconds)
    return eval_dirs


def run_in_process(args: list[str], log_path: Path) -> int:
    """``cli.py ARGS`` in this process, its stderr (warnings, the ``error: …`` line) in ``log_path``: the audit's
    runner here, where the arms already run in process (no import cost per condition)."""
    from cli import run

    with log_path.open("w", encoding="utf-8") as f, contextlib.redirect_stderr(f):
        return run(args)


def audit_arm(exp: Experiment, arm: Arm, seed: int) -> Path:
    """The visual-reliance audit of one arm's export on the main test set, with the arm's own evaluation settings,
    into ``<out>/seed<s>/audit/<arm>/``; conditions audited before are skipped. Returns that folder."""
    from evaluation.audit import audit

    assert exp.audit is not None
    out = exp.out_dir / f"seed{seed}" / "audit" / arm.name
    arm_eval = exp.out_dir / f"seed{seed}" / arm.name / f"eval-{exp.main_evaluation}.yaml"
    settings = exp.audit
    log.info("seed %d, %s: visual-reliance audit (%s)", seed, arm.name, ", ".join(settings["conditions"]))
    _, problems = audit(
        [exp.stages["eval"]["config"], str(arm_eval)],
        [],
        out,
        settings["conditions"],
        settings["cam_checkpoint"],
        seed=seed,
        n_boot=int(settings["n_boot"]),
        n_cases=int(settings["n_cases"]),
        runner=run_in_process,
    )
    for problem in problems:
        log.error("seed %d, %s, audit: %s", seed, arm.name, problem)
    return out


def _init_model(exp: Experiment, seed_dir: Path, seed: int) -> Path:
    """The seed's initial tiny model: every arm of a seed starts from the same weights (a paired comparison)."""
    from models.embedded import build_embedded_model

    path = seed_dir / "init-model"
    if not (path / "config.json").is_file():
        build_embedded_model(path, seed=seed, **exp.init_model)
    return path


def run(exp: Experiment) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """Every arm for every seed, then one comparison report per evaluation: {evaluation: (comparison.md, groups)}."""
    from evaluation.compare import aggregate, load_run, write_groups

    run_dirs = [run_arm(exp, arm, seed) for seed in exp.seeds for arm in exp.arms]
    seconds = {
        f"seed{seed}/{arm.name}": json.loads((exp.out_dir / f"seed{seed}" / arm.name / DONE).read_text())["seconds"]
        for seed in exp.seeds
        for arm in exp.arms
    }
    reports = {}
    for evaluation in exp.evaluations:
        groups = aggregate([load_run(d[evaluation]) for d in run_dirs])
        reports[evaluation] = (write_groups(groups, exp.comparison_dir(evaluation), exp.report_metrics), groups)
    main_report = reports[exp.main_evaluation][0]
    (main_report.parent / "timings.json").write_text(json.dumps(seconds, indent=2) + "\n")
    if exp.audit is not None:
        from evaluation.audit_arms import summarize_arms, write_arms

        audits = {arm.name: {seed: audit_arm(exp, arm, seed) for seed in exp.seeds} for arm in exp.arms}
        write_arms(summarize_arms(audits, int(exp.audit["n_boot"])), main_report.parent)
    return reports


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="experiment YAML (several merge in order)")
    parser.add_argument("--smoke", action="store_true", help="apply the spec's smoke section: tiny budgets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    exp = load_experiment(args.config, args.smoke)
    reports = run(exp)
    from evaluation.compare import print_comparison, render_paired

    for evaluation, (report, groups) in reports.items():
        print(f"== {evaluation}")
        print_comparison(groups, exp.report_metrics)
        print(render_paired(json.loads((report.parent / "paired.json").read_text())))
        print(f"comparison report: {report}")
    if exp.audit is not None:
        audit_md = exp.comparison_dir(exp.main_evaluation) / "audit.md"
        print(audit_md.read_text(encoding="utf-8"))
        print(f"visual-reliance audit: {audit_md}")
    return reports[exp.main_evaluation][0]


if __name__ == "__main__":
    main()
