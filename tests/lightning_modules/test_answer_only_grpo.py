"""The answer-only GRPO path (issue 17): questions with no reasoning field at all train GRPO through the CLI, on the
answer-only part of the training split given in YAML, and the checkpoint loads with weights_only=True."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from cli import main
from datamodules.splits import AnnotationSubset

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "grpo.yaml")


def test_grpo_step_on_records_without_reasoning(tmp_path, synthetic_root, tiny_model_dir):
    vqa_dir = Path(shutil.copytree(synthetic_root / "vqa", tmp_path / "vqa"))
    for path in vqa_dir.glob("*.jsonl"):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "reasoning"}) + "\n" for r in records))
    assert '"reasoning"' not in (vqa_dir / "train.jsonl").read_text()
    run = tmp_path / "run"
    overlay = {
        "model": {
            "init_args": {"model_path": str(tiny_model_dir), "generation": {"num_generations": 4}, "max_new_tokens": 8}
        },
        "data": {
            "data_dir": str(synthetic_root),
            "vqa_dir": str(vqa_dir),
            "synthetic": None,
            "num_workers": 0,
            "batch_size": 2,
            "annotation": {"fraction": 0.2, "part": "answers_only"},
        },
        "trainer": one_step_trainer(run),
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    cli = main(["fit", "--config", CONFIG, "--config", str(path)])
    assert cli.trainer.global_step == 1
    train = cli.datamodule.datasets["train"].records
    assert train and all(r["reasoning"] == "" for r in train)
    assert torch.isfinite(cli.trainer.logged_metrics["train/reward"])
    state = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["datamodule_hyper_parameters"]["annotation"] == AnnotationSubset(part="answers_only", fraction=0.2)


def one_step_trainer(run: Path) -> dict:
    """Trainer settings of a one-step fit with no validation, checkpointed (with last.ckpt) under ``run/ckpt``."""
    return {
        "max_steps": 1,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "default_root_dir": str(run),
        "logger": False,
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(run / "ckpt"), "save_last": True},
            }
        ],
    }
