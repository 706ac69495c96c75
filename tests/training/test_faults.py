"""Numerical faults: a non-finite loss, gradient or reward skips the step (no update), is logged and counted; too
many in a row stop the run with a clear error, and the checkpoint on disk stays finite and loadable."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules.ct_vqa import CTVQADataModule
from lightning_modules.grpo import GRPOModule
from lightning_modules.sft import SFTModule
from tests.lightning_modules.test_grpo import trainer as grpo_trainer
from training.checkpoint_files import load_checkpoint
from training.checkpointing import ResumableCheckpoint
from training.faults import FaultCounter, TrainingFault


class FaultySFT(SFTModule):
    """SFT whose loss (``nan_loss_steps``) or gradient (``nan_grad_steps``) turns NaN at the given steps, as an
    overflow would; records the weights every step starts from."""

    def __init__(self, nan_loss_steps=(), nan_grad_steps=(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_loss_steps, self.nan_grad_steps = set(nan_loss_steps), set(nan_grad_steps)
        self.starts: dict[int, torch.Tensor] = {}

    def _loss(self, batch):
        self.starts[self.global_step] = self.model.lm_head.weight.detach().clone()
        loss, accuracy = super()._loss(batch)
        return (loss * math.nan if self.global_step in self.nan_loss_steps else loss), accuracy

    def on_after_backward(self) -> None:
        if self.global_step in self.nan_grad_steps:
            self.model.lm_head.weight.grad[0, 0] = math.inf


def data(root: Path, model_dir: Path, **kw) -> CTVQADataModule:
    return CTVQADataModule(
        data_dir=str(root), processor_path=str(model_dir), max_samples=16, batch_size=2, num_workers=0, **kw
    )


def trainer(tmp_path: Path, max_steps: int) -> L.Trainer:
    """test_grpo's trainer, with a checkpoint every step: the last one must survive the faults."""
    every_step = ResumableCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=0, save_last=True)
    return grpo_trainer(tmp_path, max_steps, callbacks=[every_step])


def test_counter_resets_on_a_good_step_and_stops_after_n_in_a_row():
    counter = FaultCounter(max_consecutive=2)
    assert counter.record("a non-finite loss", 0) is True
    assert counter.record(None, 1) is False and counter.consecutive == 0
    counter.record("a non-finite loss", 2)
    with pytest.raises(TrainingFault, match=r"step 3: 2 steps in a row.*a non-finite gradient.*--ckpt_path last"):
        counter.record("a non-finite gradient", 3)
    assert counter.total == 3


def test_sft_skips_non_finite_steps_and_counts_them(tmp_path, synthetic_root, tiny_model_dir):
    module = FaultySFT(
        nan_loss_steps={1}, nan_grad_steps={3}, model_path=str(tiny_model_dir), learning_rate=1e-2, warmup_steps=0
    )
    fit = trainer(tmp_path, 5)
    fit.fit(module, datamodule=data(synthetic_root, tiny_model_dir))
    assert fit.global_step == 5
    assert module.faults.total == 2 and module.faults.consecutive == 0
    assert fit.logged_metrics["train/skipped_steps"].item() == 2
    # Skipped steps leave the weights as they were; good ones change them.
    assert torch.equal(module.starts[1], module.starts[2]) and torch.equal(module.starts[3], module.starts[4])
    assert not torch.equal(module.starts[0], module.starts[1])
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_sft_stops_after_n_faults_in_a_row_with_a_finite_checkpoint(tmp_path, synthetic_root, tiny_model_dir):
    module = FaultySFT(nan_loss_steps={2, 3, 4}, model_path=str(tiny_model_dir), max_consecutive_faults=3)
    with pytest.raises(TrainingFault, match="3 steps in a row were skipped"):
        trainer(tmp_path, 8).fit(module, datamodule=data(synthetic_root, tiny_model_dir))
    saved = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert saved["global_step"] == 4  # the last good checkpoint, written before the fault that stopped the run
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert saved["faults"] == {"total": 2, "consecutive": 2}


def nan_reward(completions: list[str], **_) -> list[float]:
    return [math.nan] * len(completions)


def test_grpo_skips_rollouts_without_usable_rewards_then_stops(tmp_path, synthetic_root, tiny_model_dir):
    from rewards.format import format_reward
    from rl.config import GenerationArgs, LoggingArgs, RewardArgs

    small = dict(
        generation=GenerationArgs(num_generations=2, num_generations_eval=0),
        max_new_tokens=4,
        logging=LoggingArgs(log_completions_every_n_steps=0),
    )
    module = GRPOModule(
        model_path=str(tiny_model_dir),
        reward_funcs=[format_reward, nan_reward],
        rewards=RewardArgs(reward_errors="none"),
        max_consecutive_faults=3,
        **small,
    )
    with pytest.raises(TrainingFault, match="reward nan_reward raised or returned NaN on every completion"):
        trainer(tmp_path, 6).fit(module, datamodule=data(synthetic_root, tiny_model_dir))
    assert module.faults.total == 3
    saved = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert saved["global_step"] == 2 and saved["faults"]["consecutive"] == 2
    first = GRPOModule(model_path=str(tiny_model_dir), **small)
    first.configure_model()
    for key, value in saved["state_dict"].items():  # no update was ever applied
        assert torch.equal(first.state_dict()[key], value), key
