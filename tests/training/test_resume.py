"""Crash and resume for real: a fit is SIGKILLed mid-run, resumed with ``--ckpt_path last``, and must log the
same per-step losses (and, for GRPO, rewards) as a run that was never interrupted."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lightning import seed_everything

from training.checkpoint_files import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def overlay(tmp_path: Path, name: str, synthetic_root: Path, tiny_model_dir: Path, stage: str) -> Path:
    """A run of ``stage`` on the test data with its own folder, logging and checkpointing every step or two."""
    run = tmp_path / name
    config = {
        "seed_everything": 3,
        "model": {"init_args": {"model_path": str(tiny_model_dir), "build_embedded_if_missing": False}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "max_samples": 28},
        "trainer": {
            "default_root_dir": str(run),
            "enable_progress_bar": False,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run), "name": "logs", "flush_logs_every_n_steps": 1},
            },
            "callbacks": [
                {
                    "class_path": "training.checkpointing.ResumableCheckpoint",
                    "init_args": {
                        "dirpath": str(run / "ckpt"),
                        "every_n_train_steps": 2,
                        "save_top_k": 0,
                        "save_last": True,
                    },
                }
            ],
        },
    }
    if stage == "sft":
        config["data"]["batch_size"] = 4  # 7 batches an epoch: checkpoints mid-epoch, and into a reshuffled epoch
        config["trainer"].update(max_steps=10, max_epochs=None)
    else:
        config["model"]["init_args"].update(
            generation={"num_generations": 4, "num_generations_eval": 0},
            max_new_tokens=8,
            micro_batch_size=None,
            learning_rate=1e-3,
        )
        config["data"]["batch_size"] = 2
        config["trainer"].update(max_steps=8, val_check_interval=None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(stage: str, config: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "cli.py", "fit", "--config", f"configs/{stage}.yaml", "--config", str(config), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged(run: Path, key: str) -> dict[int, float]:
    """{step: value} of ``key`` over every logger version of a run (a resumed run logs into a new version)."""
    values: dict[int, float] = {}
    for path in sorted((run / "logs").glob("version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    values[int(row["step"])] = float(row[key])
    return values


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.parametrize(
    ("stage", "keys", "kill_after"), [("sft", ["train/loss"], 4), ("grpo", ["train/reward", "train/policy_loss"], 4)]
)
def test_sigkill_then_resume_logs_the_uninterrupted_run(
    tmp_path, synthetic_root, tiny_model_dir, stage, keys, kill_after
):
    reference = launch(stage, overlay(tmp_path, "reference", synthetic_root, tiny_model_dir, stage))
    config = overlay(tmp_path, "crashed", synthetic_root, tiny_model_dir, stage)
    run = tmp_path / "crashed"
    victim = launch(stage, config)
    deadline = time.monotonic() + 600
    while max(logged(run, keys[0]), default=-1) < kill_after:  # it has logged a few steps: kill it, mid-run
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL

    # What the crash left: a complete last.ckpt from before it, nothing half-written under a real name.
    checkpoint = load_checkpoint(run / "ckpt" / "last.ckpt")
    assert 0 < checkpoint["global_step"] <= kill_after + 1
    assert "rng_states" in checkpoint

    finish(launch(stage, config, "--ckpt_path", "last"))
    finish(reference)
    assert not list((run / "ckpt").glob(".*.partial"))
    for key in keys:
        expected = logged(tmp_path / "reference", key)
        assert len(expected) >= 8
        assert logged(run, key) == expected, key  # exactly, step by step, including the steps after the resume


def test_a_new_fit_refuses_another_runs_checkpoints(tmp_path, synthetic_root, tiny_model_dir):
    from cli import main

    config = overlay(tmp_path, "run", synthetic_root, tiny_model_dir, "sft")
    ckpt = tmp_path / "run" / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "last.ckpt").write_bytes(b"another run's checkpoint")
    with pytest.raises(
        FileExistsError, match=r"ckpt already holds checkpoints of another run \(last.ckpt\).*--ckpt_path last"
    ):
        main(["fit", "--config", str(ROOT / "configs/sft.yaml"), "--config", str(config)])
    assert (ckpt / "last.ckpt").read_bytes() == b"another run's checkpoint"


KILL_MID_WRITE = """
import os, signal, sys
import lightning as L, torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from training.checkpointing import ResumableCheckpoint

class KillMidWrite(TorchCheckpointIO):
    '''Dies by SIGKILL halfway through writing the third checkpoint.'''
    saves = 0
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        KillMidWrite.saves += 1
        if sys.argv[2] == "kill" and KillMidWrite.saves == 3:
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        super().save_checkpoint(checkpoint, path, storage_options)

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(16, 2), batch_size=2)

checkpoints = ResumableCheckpoint(dirpath=sys.argv[1], every_n_train_steps=1, save_top_k=0, save_last=True)
trainer = L.Trainer(max_steps=5, plugins=[KillMidWrite()], callbacks=[checkpoints], logger=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Tiny(), ckpt_path="last" if sys.argv[2] == "resume" else None)
print("finished at step", trainer.global_step)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    script, ckpt = tmp_path / "kill_mid_write.py", tmp_path / "ckpt"
    script.write_text(KILL_MID_WRITE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, str(script), str(ckpt), "kill"], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (ckpt / ".last.ckpt.partial").read_bytes() == b"half a checkpoint"  # the write it died in
    assert load_checkpoint(ckpt / "last.ckpt")["global_step"] == 2

    resumed = subprocess.run(
        [sys.executable, str(script), str(ckpt), "resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "finished at step 5" in resumed.stdout
    assert not (ckpt / ".last.ckpt.partial").exists()
    assert load_checkpoint(ckpt / "last.ckpt")["global_step"] == 5


def test_one_seed_fixes_the_loss_curve_and_reaches_data_order_and_sampling(tmp_path, synthetic_root, tiny_model_dir):
    from cli import main
    from lightning_modules.grpo import GRPOModule
    from rl.config import GenerationArgs

    def losses(name: str, seed: int) -> dict[int, float]:
        config = overlay(tmp_path, name, synthetic_root, tiny_model_dir, "sft")
        cli = main(
            ["fit", "--config", str(ROOT / "configs/sft.yaml"), "--config", str(config), "--trainer.max_steps", "3"]
            + ["--seed_everything", str(seed)]
        )
        assert cli.datamodule.seed == seed  # data.seed is null: it follows seed_everything
        return logged(tmp_path / name, "train/loss")

    first = losses("a", 3)
    assert len(first) == 3 and losses("b", 3) == first
    assert losses("c", 4) != first  # another seed, another data order

    seed_everything(5)
    five = GRPOModule(generation=GenerationArgs(sampling_seed=None)).rollout_seed(0)
    seed_everything(6)
    assert GRPOModule(generation=GenerationArgs(sampling_seed=None)).rollout_seed(0) != five
    assert GRPOModule(generation=GenerationArgs(sampling_seed=5)).rollout_seed(0) == five
