"""Candidate views end to end through the CLI: a GRPO step on prompts with several images each, paid also by the
evidence-view reward, its checkpoint loading with weights_only=True, and the test stage on those prompts."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from cli import main
from datamodules.roi_sources import AnatomyROI
from datamodules.views import ViewSpec
from datamodules.vqa_builder import build_vqa
from tests.lightning_modules.test_answer_only_grpo import one_step_trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_grpo_step_and_evaluation_with_candidate_views(tmp_path, synthetic_root, tiny_model_dir):
    run = tmp_path / "run"
    build_vqa(synthetic_root, tmp_path / "vqa-views", seed=0, roi_source=AnatomyROI(), views=ViewSpec(k=3, slab_mm=10))
    data = {
        "data_dir": str(synthetic_root),
        "vqa_dir": str(tmp_path / "vqa-views"),
        "synthetic": None,
        "num_workers": 0,
        "batch_size": 2,
        "image_size": 56,
        "max_samples": 4,
        "question_types": ["presence"],
        "roi_source": {"class_path": "datamodules.roi_sources.AnatomyROI"},
        "views": {"k": 3, "slab_mm": 10},
    }
    overlay = {
        "model": {
            "init_args": {
                "model_path": str(tiny_model_dir),
                "generation": {"num_generations": 2},
                "max_new_tokens": 8,
                "reward_funcs": ["rewards.accuracy.accuracy_reward", "rewards.evidence.evidence_view_reward"],
                "rewards": {"reward_weights": [1.0, 0.5]},
            }
        },
        "data": data,
        "trainer": one_step_trainer(run),
    }
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(overlay))
    cli = main(["fit", "--config", str(CONFIGS / "grpo.yaml"), "--config", str(tmp_path / "grpo.yaml")])
    assert cli.trainer.global_step == 1
    batch_views = [len(r["views"]) for r in cli.datamodule.datasets["train"].records]
    assert max(batch_views) == 3  # the prompts trained on hold several images
    metrics = cli.trainer.logged_metrics
    assert torch.isfinite(metrics["train/reward"]) and metrics["data/image_tokens_max"] >= 3 * 4  # 4 per 56 px image
    assert "train/rewards/evidence_view_reward/mean" in metrics
    state = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["datamodule_hyper_parameters"]["views"] == ViewSpec(k=3, slab_mm=10)

    evaluation = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 8}},
        "data": data,
        "trainer": {"default_root_dir": str(tmp_path / "eval")},
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(evaluation))
    cli = main(["test", "--config", str(CONFIGS / "eval.yaml"), "--config", str(tmp_path / "eval.yaml")])
    results = cli.model.test_results
    assert results is not None and len(results["predictions"]) == 4
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0
