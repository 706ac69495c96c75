"""FSDP2 (ModelParallelStrategy + fully_shard) on CPU: a 2-process sharded fit matches the single-process one."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Lightning's FSDP2 (fully_shard) strategy on 2 processes, as a config value.
FSDP2_STRATEGY = {
    "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
    "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
}


def reward_on_rank_one_only(completions: list[str], **_: object) -> list[float | None]:
    """A reward that applies on rank 1 only (1.0 there, None on rank 0)."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return [1.0 if rank == 1 else None for _ in completions]


def _fit(
    tmp_path: Path,
    name: str,
    synthetic_root: Path,
    tiny_model_dir: Path,
    batch_size: int,
    *args: str,
    **trainer,
) -> list[float]:
    run = tmp_path / name
    config = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "build_embedded_if_missing": False}},
        "data": {
            "data_dir": str(synthetic_root),
            "synthetic": None,
            "num_workers": 0,
            "shuffle": False,
            "batch_size": batch_size,
        },
        "trainer": {
            "max_steps": 3,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "callbacks": [],
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
            **trainer,
        },
    }
    overlay = tmp_path / f"{name}.yaml"
    overlay.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "cli.py", "fit", "--config", "configs/sft.yaml", "--config", str(overlay), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = sorted(run.rglob("metrics.csv"))[-1]  # the latest run's
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in rows]


def test_two_process_fsdp2_matches_single_process(tmp_path, synthetic_root, tiny_model_dir):
    single = _fit(tmp_path, "single", synthetic_root, tiny_model_dir, batch_size=8, devices=1)
    sharded = _fit(
        tmp_path,
        "fsdp",
        synthetic_root,
        tiny_model_dir,
        batch_size=4,
        devices=2,
        strategy=FSDP2_STRATEGY,
    )
    assert len(single) == len(sharded) == 3
    # Same global batch of 8 (4 per rank, unshuffled); the per-rank token means weigh samples slightly
    # differently from one 8-sample mean, hence a small tolerance rather than exact equality.
    assert sharded == pytest.approx(single, rel=1e-2)
    assert sharded[-1] < sharded[0]  # and it learns


def test_two_process_fsdp2_sharded_checkpoint_is_written_atomically_and_resumes(
    tmp_path, synthetic_root, tiny_model_dir
):
    """Under FSDP2 a checkpoint is a folder of shards: it too is written under a partial name and renamed."""
    ckpt = tmp_path / "ckpt"
    sharded = dict(
        devices=2,
        strategy=FSDP2_STRATEGY,
        enable_checkpointing=True,
        callbacks=[
            {
                "class_path": "training.checkpointing.ResumableCheckpoint",
                "init_args": {"dirpath": str(ckpt), "every_n_train_steps": 1, "save_top_k": 0, "save_last": True},
            }
        ],
    )
    _fit(tmp_path, "fsdp", synthetic_root, tiny_model_dir, 4, max_steps=2, **sharded)
    assert (ckpt / "last.ckpt").is_dir() and any((ckpt / "last.ckpt").iterdir())
    assert [p.name for p in ckpt.iterdir()] == ["last.ckpt"]  # no partial or old folder left behind
    resumed = _fit(tmp_path, "fsdp", synthetic_root, tiny_model_dir, 4, "--ckpt_path", "last", max_steps=3, **sharded)
    assert len(resumed) == 1  # only step 3 was trained again


@pytest.mark.parametrize("checkpointing", [False, True])
def test_two_process_fsdp2_grpo_with_a_sharded_reference(tmp_path, synthetic_root, tiny_model_dir, checkpointing):
    """GRPO under FSDP2: sharded policy and reference, batch-std advantages across ranks, generation in lockstep;
    with gradient checkpointing too (the shared prompt's KV cache then crosses checkpointed, sharded layers)."""
    run = tmp_path / "grpo"
    config = {
        "model": {
            "init_args": {
                "model_path": str(tiny_model_dir),
                "generation": {"num_generations": 4},
                "max_new_tokens": 8,
                "micro_batch_size": 3,
                "loss": {"beta": 0.1, "mask_truncated_completions": False},  # 8 new tokens: nearly all truncated
                "learning_rate": 1e-3,
                "reward_funcs": [
                    "tests.lightning_modules.test_grpo.vowel_reward",
                    "tests.lightning_modules.test_fsdp.reward_on_rank_one_only",
                ],
                "rewards": {"scale_rewards": "batch", "reward_weights": None},
                "logging": {"log_completions_every_n_steps": 0},
                "gradient_checkpointing": checkpointing,
            }
        },
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "batch_size": 2},
        "trainer": {
            "devices": 2,
            "strategy": FSDP2_STRATEGY,
            "max_steps": 2,
            "val_check_interval": 2,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "callbacks": [],
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
        },
    }
    overlay = tmp_path / "grpo.yaml"
    overlay.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "cli.py", "fit", "--config", "configs/grpo.yaml", "--config", str(overlay)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics,) = run.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    kl = [float(r["train/kl"]) for r in rows if r.get("train/kl")]
    assert len(kl) == 2 and kl[0] == 0.0 and kl[1] > 0.0  # identical at the start, then the policy moved
    assert any(r.get("val/accuracy") for r in rows)
    # Rank 0 has no value for this reward: the logged mean is rank 1's, not NaN.
    logged = [r["train/rewards/reward_on_rank_one_only/mean"] for r in rows if r.get("train/rewards/vowel_reward/mean")]
    assert logged == ["1.0", "1.0"]
