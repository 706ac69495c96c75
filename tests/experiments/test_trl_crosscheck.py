"""experiments/trl_crosscheck.py: our GRPO settings in TRL's terms, our loader's prompt order, and a TRL smoke run.

The smoke run needs TRL (benchmarks/requirements.txt, not a runtime dependency): skipped where it is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from experiments.trl_crosscheck import grpo_settings, load_stage, main, rollout_prompts

GRPO = str(Path(__file__).resolve().parents[2] / "configs" / "grpo.yaml")


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> dict[str, Any]:
    """configs/grpo.yaml at smoke scale: 2 prompts × G=2 per rollout in micro-batches of 2, 4 tokens, 2 steps."""
    return {
        "model": {"init_args": {"generation": {"num_generations": 2}, "max_new_tokens": 4, "micro_batch_size": 2}},
        "data": {
            "data_dir": str(synthetic_root),
            "synthetic": None,
            "batch_size": 2,
            "eval_batch_size": 4,
            "num_workers": 0,
            "max_samples": 5,
        },
        "trainer": {"max_steps": 2, "logger": False, "callbacks": []},
    }


def _write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_settings_map_to_grpo_config_fields(tmp_path, overlay, tiny_model_dir):
    module, datamodule, trainer, config = load_stage([GRPO, _write(tmp_path, overlay)], str(tiny_model_dir))
    settings = grpo_settings(module, datamodule, trainer, config)
    # One rollout of 2 prompts × G=2 = 4 completions, in two micro-batches of 2: one optimizer step per rollout.
    assert settings["per_device_train_batch_size"] == 2
    assert settings["gradient_accumulation_steps"] == settings["steps_per_generation"] == 2
    assert settings["max_completion_length"] == 4 and settings["max_steps"] == 2
    assert (settings["epsilon"], settings["epsilon_high"], settings["beta"]) == (0.2, 0.28, 0.04)
    assert settings["reward_weights"] == [1.0, 0.5, 0.5] and settings["loss_type"] == "dapo"
    assert settings["use_cpu"] is True and settings["bf16"] is False and settings["seed"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": {"init_args": {"loss": {"dynamic_sampling": True}}}},
            "dynamic_sampling: True cannot be cross-checked",
        ),
        ({"model": {"init_args": {"micro_batch_size": 3}}}, "micro_batch_size: 3 does not divide a rollout's 4"),
        (
            {"model": {"init_args": {"loss": {"num_iterations": 3}}}},
            "max_steps: 2; set a positive multiple of num_iterations",
        ),
    ],
)
def test_settings_trl_cannot_express_are_refused(tmp_path, overlay, tiny_model_dir, change, message):
    from experiments.replicate import deep_merge

    stage = load_stage([GRPO, _write(tmp_path, deep_merge(overlay, change))], str(tiny_model_dir))
    with pytest.raises(ValueError, match=message):
        grpo_settings(*stage)


def test_rollouts_follow_our_train_loader(tmp_path, overlay, tiny_model_dir):
    _, datamodule, _, _ = load_stage([GRPO, _write(tmp_path, overlay)], str(tiny_model_dir))
    datamodule.setup("fit")
    ours, theirs = rollout_prompts(datamodule, rollouts=4)
    # 5 training questions in batches of 2: our epoch 0 ends with a batch of 1, which TRL cannot make.
    assert [len(b) for b in ours] == [2, 2, 1, 2] and [len(b) for b in theirs] == [2, 2, 2, 2]
    assert sum(a == b for a, b in zip(ours, theirs, strict=True)) == 2
    train = datamodule.datasets["train"]
    loader_ids = [batch["meta"][i]["id"] for batch in datamodule.train_dataloader() for i in range(len(batch["meta"]))]
    assert [train.records[i]["id"] for b in ours[:3] for i in b] == loader_ids


def test_trl_smoke_run_is_evaluated_by_our_evaluator(tmp_path, overlay, tiny_model_dir):
    pytest.importorskip("trl")
    out = tmp_path / "out"
    argv = ["--config", GRPO, "--config", _write(tmp_path, overlay), "--model_path", str(tiny_model_dir)]
    tests = ["--evaluation", "test", "{}", "--evaluation", "two", "{max_samples: 2}"]
    summary = main([*argv, "--out_dir", str(out), "--eval_data_overrides", "{max_samples: 4}", *tests])
    assert summary["rollouts"] == summary["rollouts_with_our_prompts"] == 2
    assert summary["prompt_ids_identical"] is True
    # Our schedule, not HF's: configs/grpo.yaml's 5 warmup steps capped at the run's 2, the first at 1/3 of the
    # rate (HF's warmup would start at 0).
    rates = [step["learning_rate"] for step in summary["log_history"][:2]]
    assert rates == pytest.approx([2e-5 / 3, 2e-5 * 2 / 3])
    assert {"rewards/accuracy_reward/mean", "rewards/validity_reward/mean"} <= set(summary["log_history"][0])
    run = out / "eval" / "trl_grpo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n/presence"] + metrics["n/abnormality"] == 4
    assert json.loads((run / "run.json").read_text())["name"] == "trl_grpo"
    assert (out / "model" / "model.safetensors").is_file()
    # A second test set: its own folder beside eval/, as experiments.replicate lays them out.
    two = json.loads((out / "eval-two" / "trl_grpo" / "metrics.json").read_text())
    assert two["n/presence"] + two.get("n/abnormality", 0) == 2
    assert set(summary["accuracy"]) == {"test/trl_grpo", "two/trl_grpo"}
