"""SFT through the real CLI and config: a short fit, resume from its checkpoint, export and reload."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import Qwen2_5_VLForConditionalGeneration

from cli import main
from datamodules.collate import IGNORE_INDEX
from datamodules.ct_vqa import CTVQADataModule
from lightning_modules.sft import SFTModule
from training.checkpoint_files import load_checkpoint
from training.faults import all_finite, gradients_finite

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "sft.yaml")


def overlay(tmp_path: Path, synthetic_root: Path, tiny_model_dir: Path, **trainer) -> str:
    """A YAML overlay on configs/sft.yaml pointing at the test data, model and a temp run folder."""
    run = tmp_path / "run"
    config = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "build_embedded_if_missing": False}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "max_samples": 16},
        "trainer": {
            "default_root_dir": str(run),
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run / "ckpt"),
                        "monitor": "val/accuracy",
                        "mode": "max",
                        "save_last": True,
                    },
                }
            ],
            **trainer,
        },
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def fit(*extra: str):
    return main(["fit", "--config", CONFIG, *extra])


def test_fit_resume_export(tmp_path, synthetic_root, tiny_model_dir):
    cfg = overlay(tmp_path, synthetic_root, tiny_model_dir, max_steps=3, limit_val_batches=1)
    first = fit("--config", cfg)
    assert first.trainer.global_step == 3
    losses = first.trainer.callback_metrics
    assert torch.isfinite(losses["train/loss"]) and "val/accuracy" in losses
    last = tmp_path / "run" / "ckpt" / "last.ckpt"
    assert last.is_file()
    start = {k: v.clone() for k, v in first.model.model.state_dict().items()}

    resumed = fit("--config", cfg, "--trainer.max_steps", "5", "--ckpt_path", str(last))
    assert resumed.trainer.global_step == 5
    # Resumed from step 3's weights and optimizer, then trained on: weights moved, scheduler continued.
    assert any(not torch.equal(start[k], v) for k, v in resumed.model.model.state_dict().items())
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 5

    out = tmp_path / "exported"
    main(["export", "--config", CONFIG, "--config", cfg, "--ckpt_path", str(last), "--out_dir", str(out)])
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    module = SFTModule(model_path=str(tiny_model_dir), build_embedded_if_missing=False)
    module.configure_model()
    module.load_state_dict(load_checkpoint(last)["state_dict"])
    module.eval()
    data = CTVQADataModule(data_dir=str(synthetic_root), processor_path=str(out), max_samples=4, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        expected = module(batch)
        got = reloaded(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        ).logits
    assert torch.equal(expected, got)


def test_missing_model_dir_is_a_clear_error(tmp_path, synthetic_root):
    module = SFTModule(model_path=str(tmp_path / "nowhere"), build_embedded_if_missing=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        module.prepare_data()


def test_saved_configs_hold_no_absolute_paths(tmp_path, synthetic_root, tiny_model_dir, monkeypatch):
    """A run folder moves to another machine intact: its config.yaml and hparams.yaml name paths as given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(synthetic_root)
    (tmp_path / "model").symlink_to(tiny_model_dir)
    config = {
        "model": {"init_args": {"model_path": "model", "build_embedded_if_missing": False}},
        "data": {"data_dir": "data", "synthetic": None, "num_workers": 0, "max_samples": 8},
        "trainer": {
            "max_steps": 2,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "default_root_dir": "runs/sft",
            "log_every_n_steps": 1,  # the loggers are sft.yaml's own: CSV and TensorBoard under runs/sft
            "callbacks": [
                {
                    "class_path": "training.checkpointing.ResumableCheckpoint",
                    "init_args": {"dirpath": "runs/sft/ckpt", "save_top_k": 0, "save_last": True},
                }
            ],
        },
    }
    Path("overlay.yaml").write_text(yaml.safe_dump(config))
    fit("--config", "overlay.yaml")
    saved = [p for p in Path("runs").rglob("*") if p.suffix in (".yaml", ".json")]
    assert {p.name for p in saved} >= {"config.yaml", "hparams.yaml"}
    for path in saved:
        text = path.read_text()
        assert str(tmp_path) not in text and str(Path(CONFIG).parents[1]) not in text, path
    # Both loggers of sft.yaml wrote this run, side by side: the loss curve in the CSV and in TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert "train/loss" in Path("runs/sft/logs/version_0/metrics.csv").read_text().splitlines()[0]
    (events,) = Path("runs/sft/tb/version_0").glob("events.out.tfevents.*")
    assert "train/loss" in EventAccumulator(str(events)).Reload().Tags()["scalars"]


@pytest.mark.parametrize(("value", "finite"), [(1.0, True), (3e38, True), (math.inf, False), (math.nan, False)])
def test_gradient_check_agrees_with_the_element_wise_one(tiny_model_dir, value, finite):
    """The norm-first check skips exactly the steps an element-wise check skips, including a huge but finite
    gradient whose squared norm overflows."""
    module = SFTModule(model_path=str(tiny_model_dir), build_embedded_if_missing=False)
    module.configure_model()
    for p in module.model.parameters():
        p.grad = torch.zeros_like(p)
    module.model.lm_head.weight.grad[0, 0] = value
    assert gradients_finite(module.model, module.device) is finite
    assert all_finite([p.grad for p in module.model.parameters()], module.device) is finite


def test_loss_is_the_answer_only_cross_entropy(synthetic_root, tiny_model_dir):
    """Shifting the labels instead of the logits computes the same loss and token accuracy as the plain slice."""
    module = SFTModule(model_path=str(tiny_model_dir), build_embedded_if_missing=False)
    module.configure_model()
    data = CTVQADataModule(data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), max_samples=4)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        loss, accuracy = module._loss(batch)
        logits, labels = module(batch)[:, :-1], batch["labels"][:, 1:]
    supervised = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[supervised], labels[supervised])
    torch.testing.assert_close(loss, expected)
    assert accuracy == (logits.argmax(-1) == labels)[supervised].float().mean()


def test_the_lm_head_runs_on_the_answer_positions_only(synthetic_root, tiny_model_dir):
    """Rows are left-padded, so answers end every row: the head sees the positions from the earliest answer token
    on, not the prompts (image tokens, question)."""
    module = SFTModule(model_path=str(tiny_model_dir), build_embedded_if_missing=False)
    module.configure_model()
    data = CTVQADataModule(data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), max_samples=4)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    seen = []
    module.model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        module._loss(batch)
    labels = batch["labels"][:, 1:]
    first_answer = int((labels != IGNORE_INDEX).any(dim=0).nonzero()[0])
    assert seen == [labels.size(1) + 1 - first_answer] and seen[0] < batch["input_ids"].size(1) // 2
