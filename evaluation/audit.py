"""Visual-reliance audit: one model, the same test questions, shown different images; how much accuracy survives.

    python -m evaluation.audit --config configs/eval.yaml --model.init_args.model_path artifacts/sft-model \
        --out runs/audit/sft-model [--conditions original blank shuffled ...] [--cam_checkpoint CKPT]

Every condition is ``cli.py test`` with the given configs and arguments plus one data setting,
``data.image_condition`` (``datamodules/image_conditions.py``), in its own process (log: ``<out>/logs/<condition>.log``)
into ``<out>/runs/<condition>``: prompts, decoding, answer parsing and metrics are the evaluation's own, and every
image is rendered by the training code. Then ``<out>/table.{md,json}`` (per condition: accuracy per question type,
overall, macro F1, p(yes) AUROC, format and validity with 95 % bootstrap CIs, and the paired difference to
``original`` with its CI and exact p, ``evaluation/paired.py``), ``<out>/accuracy.png`` and ``<out>/report.md`` (a
few questions under every condition, with the image the model saw). Unknown arguments go to ``cli.py test``.
A condition evaluated before by the same command is skipped, so an interrupted audit resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from common.files import atomic_write_text
from evaluation.cli_runs import Runner, done_before, run_cli, run_once

log = logging.getLogger("evaluation.audit")
ANATOMY = {"class_path": "datamodules.roi_sources.AnatomyROI"}
CAM = "lightning_modules.roi_classifier.CAMROI"
# Condition → data.image_condition (None: the original image, exactly the plain evaluation).
CONDITIONS: dict[str, dict[str, Any] | None] = {
    "original": None,
    "blank": {"name": "blank"},
    "shuffled": {"name": "shuffled"},
    "global_only": {"name": "global_only"},
    "outline_only": {"name": "outline_only"},
    "zoom_only": {"name": "zoom_only"},
    "wrong_region": {"name": "wrong_region"},
    "box_anatomy": {"name": "box_source", "roi_source": ANATOMY},
    "box_cam": {"name": "box_source", "roi_source": {"class_path": CAM, "init_args": {"checkpoint": None}}},
}
RUN_FILES = ("metrics.json", "predictions.jsonl", "run.json", "config.yaml", "report.md")
DONE = "audit.json"  # the command that made the run folder, written after it succeeded


def image_condition(condition: str, seed: int, cam_checkpoint: str | None) -> dict[str, Any] | None:
    """``data.image_condition`` of a condition (KeyError: unknown; ValueError: ``box_cam`` without a checkpoint)."""
    spec = CONDITIONS[condition]
    if spec is None:
        return None
    spec = {**json.loads(json.dumps(spec)), "seed": seed}
    if condition == "box_cam":
        if not cam_checkpoint:
            raise ValueError(
                "box_cam needs --cam_checkpoint (a ROI classifier checkpoint: configs/roi_classifier.yaml)"
            )
        spec["roi_source"]["init_args"]["checkpoint"] = cam_checkpoint
    return spec


def original_first(conditions: list[str]) -> list[str]:
    """``conditions`` with ``original`` (the reference every other condition is compared with) first, once."""
    return ["original", *[c for c in conditions if c != "original"]]


def command(configs: list[str], extra: list[str], out: Path, condition: str, spec: dict | None) -> list[str]:
    """``cli.py test`` arguments of one condition; writes its overlay config (image condition, run folder)."""
    report = {"out_dir": str(out / "runs"), "name": condition, "overwrite": True}
    overlay = {
        "data": {"image_condition": spec},
        "trainer": {
            "enable_progress_bar": False,  # the log is a file
            "callbacks": [{"class_path": "evaluation.callbacks.EvaluationReport", "init_args": report}],
        },
    }
    path = out / "configs" / f"{condition}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(overlay, sort_keys=False))
    return ["test", *[a for c in configs for a in ("--config", c)], "--config", str(path), *extra]


def evaluate(args: list[str], out: Path, condition: str, runner: Runner = run_cli) -> str | None:
    """Run one condition (``runner``: a process per condition by default) unless its folder was made by the same
    command; None, or why it failed."""
    run_dir, log_path = out / "runs" / condition, out / "logs" / f"{condition}.log"
    record = {"command": args}
    if done_before(condition, run_dir, DONE, record, RUN_FILES):
        return None
    log.info("%s: evaluating (log: %s)", condition, log_path)
    return run_once(args, run_dir, log_path, DONE, record, RUN_FILES, runner)


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run folder's predictions (by id), metrics and run.json."""
    text = (run_dir / "predictions.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {
        "predictions": rows,
        "metrics": json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")),
        "info": json.loads((run_dir / "run.json").read_text(encoding="utf-8")),
    }


def condition_dataset(run_dir: Path) -> Any:
    """The test dataset exactly as the run built it: its config.yaml's data section with cli.py's linked arguments
    (processor from the model's directory), instantiated as LightningCLI does (``jsonargparse``), set up for
    ``test``."""
    import lightning as L
    from jsonargparse import ArgumentParser

    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    data, model = config["data"], config["model"]["init_args"]
    # cli.py links these from the model; LightningCLI leaves link targets out of the saved config.yaml.
    data.setdefault("init_args", {}).update(
        processor_path=model["model_path"], processor_trust_remote_code=model.get("trust_remote_code", False)
    )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=L.LightningDataModule)
    datamodule = parser.instantiate_classes(parser.parse_object({"data": data})).data
    datamodule.setup("test")
    return datamodule.datasets["test"]


def statuses(dataset: Any) -> dict[str, str]:
    """What each question's image under the run's condition is (``RecordViews.view``'s status), by question id."""
    if dataset.renderer.views is None:
        return {}
    return {r["id"]: dataset.renderer.views.view(r)[1] for r in dataset.records}


def save_images(dataset: Any, ids: list[str], folder: Path) -> dict[str, str]:
    """The images the model saw for ``ids`` as small PNGs in ``folder``; {id: path}."""
    from common.files import atomic_path
    from datamodules.transforms import to_pil

    folder.mkdir(parents=True, exist_ok=True)
    by_id = {r["id"]: r for r in dataset.records}
    paths = {}
    for qid in ids:
        path = folder / f"{qid}.png"
        with atomic_path(path) as tmp:
            to_pil(dataset.image(by_id[qid])).save(tmp, format="png")
        paths[qid] = str(path)
    return paths


def audit(
    configs: list[str],
    extra: list[str],
    out: Path,
    conditions: list[str],
    cam_checkpoint: str | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    n_cases: int = 4,
    runner: Runner = run_cli,
) -> tuple[Path, list[str]]:
    """Every condition, then the table, figure and report: (report.md, problems). ``runner`` runs ``cli.py`` (a
    process per condition; a test runs them in its own process)."""
    from evaluation.audit_report import pick_cases, summarize, write_outputs

    if conditions[0] != "original":
        raise ValueError(f"the first condition must be original (the reference), got {conditions}")
    errors = {}
    for condition in conditions:
        spec = image_condition(condition, seed, cam_checkpoint)
        errors[condition] = evaluate(command(configs, extra, out, condition, spec), out, condition, runner)
        if errors[condition]:
            log.error("%s failed: %s", condition, errors[condition])
    if errors["original"]:
        raise RuntimeError(f"the original condition failed: {errors['original']}")
    runs = {c: read_run(out / "runs" / c) for c in conditions if not errors[c]}
    cases = pick_cases(runs["original"]["predictions"], n_cases)
    notes, images = {}, {}
    for condition in runs:
        dataset = condition_dataset(out / "runs" / condition)
        notes[condition] = Counter(statuses(dataset).values())
        images[condition] = save_images(dataset, cases, out / "images" / condition)
    summary = summarize(runs, errors, notes, n_boot, seed)
    return write_outputs(out, summary, runs, cases, images), summary["problems"]


def main(argv: list[str] | None = None) -> int:
    """CLI: the audit; status 1 when a condition failed or the runs were not on the same questions."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--config", action="append", required=True, help="cli.py config (several: in order)")
    parser.add_argument("--out", required=True, help="audit folder, e.g. runs/audit/sft-model")
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), help="default: all (box_cam: with CAM)")
    parser.add_argument("--cam_checkpoint", help="ROI classifier checkpoint for box_cam (CAMROI)")
    parser.add_argument("--seed", type=int, default=0, help="of the shuffle, the wrong regions and the bootstrap")
    parser.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples of the questions")
    parser.add_argument("--cases", type=int, default=4, help="questions shown under every condition in report.md")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    conditions = args.conditions or [c for c in CONDITIONS if c != "box_cam" or args.cam_checkpoint]
    conditions = original_first(conditions)
    try:
        report, problems = audit(
            args.config, extra, Path(args.out), conditions, args.cam_checkpoint, args.seed, args.n_boot, args.cases
        )
    except ValueError as error:
        parser.error(str(error))
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    print(f"audit report: {report}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
