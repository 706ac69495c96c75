"""Checkpoints by path, ``last`` and ``best`` for every module and command; checkpoints read as data only.

One tiny fit per module (module-scoped), each with the shipped configs' two checkpoint callbacks (best by a
monitor, and the ``last.ckpt`` resume point); every command then takes its checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from cli import main, run
from datamodules.synthetic_ctrate import make_phantom
from training.checkpoint_files import UnsafeCheckpointError, load_checkpoint, load_checkpoint_file
from training.checkpoint_selection import best_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SFT, GRPO, EVAL, ROI = (str(CONFIGS / f"{name}.yaml") for name in ("sft", "grpo", "eval", "roi_classifier"))


def callbacks(ckpt: Path, monitor: str, mode: str, every_n_train_steps: int) -> list[dict]:
    """The shipped configs' pair: the best checkpoint by ``monitor``, and ``last.ckpt`` every n steps."""
    kind = "training.checkpointing.ResumableCheckpoint"
    best = {"dirpath": str(ckpt), "filename": "best-{step}", "monitor": monitor, "mode": mode}
    last = {"dirpath": str(ckpt), "every_n_train_steps": every_n_train_steps, "save_top_k": 0, "save_last": True}
    return [{"class_path": kind, "init_args": best}, {"class_path": kind, "init_args": last}]


def write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def own(hparams) -> dict:
    """A module's saved hyperparameters, without the instantiator's bookkeeping."""
    return {k: v for k, v in dict(hparams).items() if not k.startswith("_")}


def eval_overlay(tmp_path: Path, synthetic_root: Path, tiny_model_dir: Path) -> str:
    config = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 4}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "max_samples": 2},
        "trainer": {
            "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "evaluation.callbacks.EvaluationReport", "init_args": {"out_dir": str(tmp_path)}}
            ],
        },
    }
    return write(tmp_path / "eval.yaml", config)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, synthetic_root, tiny_model_dir):
    """4 SFT steps, validated at steps 2 and 4, the best monitored by ``train/lr`` (rising in warm-up): the last
    validation is the best, as when ``make replicate`` lost its best checkpoint."""
    tmp = tmp_path_factory.mktemp("sft")
    config = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "build_embedded_if_missing": False}},
        "data": {
            "data_dir": str(synthetic_root),
            "synthetic": None,
            "num_workers": 0,
            "max_samples": 8,
            "batch_size": 2,
            "eval_batch_size": 2,
        },
        "trainer": {
            "max_steps": 4,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp),
            "logger": False,
            "callbacks": callbacks(tmp / "ckpt", "train/lr", "max", every_n_train_steps=2),
        },
    }
    config["model"]["init_args"]["max_new_tokens"] = 4
    cfg = write(tmp / "sft.yaml", config)
    fitted = main(["fit", "--config", SFT, "--config", cfg])
    return tmp, cfg, own(fitted.model.hparams)


def test_best_is_the_best_file_on_disk_when_the_last_validation_is_best(sft_run, capsys):
    tmp, cfg, _ = sft_run
    ckpt = tmp / "ckpt"
    assert sorted(p.name for p in ckpt.glob("*.ckpt")) == ["best-step=4.ckpt", "last.ckpt"]
    # last.ckpt was written at step 4 before that validation saved best-step=4 (and deleted best-step=2): it was
    # written again after, so its record of the best file names one that exists.
    states = load_checkpoint(ckpt / "last.ckpt")["callbacks"].values()
    recorded = [Path(s["best_model_path"]).name for s in states if s.get("monitor") == "train/lr"]
    assert recorded == ["best-step=4.ckpt"]
    assert best_checkpoint(ckpt, "train/lr", "max") == ckpt / "best-step=4.ckpt"
    assert best_checkpoint(ckpt, "train/lr", "min") == ckpt / "best-step=4.ckpt"  # the only one on disk

    main(["export", "--config", SFT, "--config", cfg, "--ckpt_path", "best", "--out_dir", str(tmp / "best-model")])
    assert f"from {ckpt / 'best-step=4.ckpt'} to" in capsys.readouterr().out


def test_sft_checkpoint_by_path_last_and_best(sft_run, tmp_path, synthetic_root, tiny_model_dir, capsys):
    tmp, cfg, trained = sft_run
    last = str(tmp / "ckpt" / "last.ckpt")
    # By path, LightningCLI rebuilds the module from the checkpoint's hyperparameters: they must round-trip.
    evaluated = main(["test", "--config", EVAL, "--config", eval_overlay(tmp_path, synthetic_root, tiny_model_dir),
                      "--ckpt_path", last])  # fmt: skip
    assert type(evaluated.model).__name__ == "SFTModule" and own(evaluated.model.hparams) == trained
    validated = main(["validate", "--config", SFT, "--config", cfg, "--ckpt_path", "best"])
    assert validated.trainer.ckpt_path == str(tmp / "ckpt" / "best-step=4.ckpt")
    main(["export", "--config", SFT, "--config", cfg, "--ckpt_path", "last", "--out_dir", str(tmp_path / "m")])
    assert f"from {last} to" in capsys.readouterr().out
    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom(np.random.default_rng(0), findings=False).hu, np.eye(4)), volume)
    asked = ["ask", "--config", SFT, "--config", cfg, "--volume", str(volume), "--question", "Any nodule?"]
    main([*asked, "--ckpt_path", last, "--slice_index", "3", "--out_dir", str(tmp_path / "ask")])
    assert json.loads((tmp_path / "ask" / "answer.json").read_text())["slice_index"] == 3
    resumed = main(["fit", "--config", SFT, "--config", cfg, "--ckpt_path", last, "--trainer.max_steps", "5"])
    assert resumed.trainer.global_step == 5 and own(resumed.model.hparams) == trained


def test_a_checkpoint_holding_code_is_refused_not_run(sft_run, tmp_path, synthetic_root, tiny_model_dir, capsys):
    """A shared checkpoint whose hyperparameters carry a pickled callable: every way in refuses it in one line,
    and the callable never runs (it would create ``ran``)."""
    tmp, cfg, _ = sft_run
    checkpoint = load_checkpoint(tmp / "ckpt" / "last.ckpt")
    checkpoint["hyper_parameters"]["payload"] = Payload(tmp_path / "ran")
    evil = tmp_path / "shared" / "best-step=9.ckpt"
    evil.parent.mkdir()
    torch.save(checkpoint, evil)

    with pytest.raises(UnsafeCheckpointError, match=r"best-step=9.ckpt: refused to load, it holds code"):
        load_checkpoint_file(evil)
    with pytest.raises(UnsafeCheckpointError):
        best_checkpoint(evil.parent, "train/lr", "max")
    out = str(tmp_path / "exported")
    for args in (
        ["export", "--config", SFT, "--config", cfg, "--ckpt_path", str(evil), "--out_dir", out],
        ["test", "--config", EVAL, "--config", eval_overlay(tmp_path, synthetic_root, tiny_model_dir),
         "--ckpt_path", str(evil)],
    ):  # fmt: skip
        assert run(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {evil}: refused to load, it holds code") and "\n" not in err
    assert not (tmp_path / "ran").exists() and not Path(out).exists()


class Payload:
    """What an attacker pickles: unpickling it calls ``Path.touch`` (any function could be there)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, synthetic_root, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("grpo")
    config = {
        "model": {
            "init_args": {
                "model_path": str(tiny_model_dir),
                "generation": {"num_generations": 2, "num_generations_eval": 0},
                "max_new_tokens": 4,
                "loss": {"beta": 0.0},
                "logging": {"log_completions_every_n_steps": 100},
            }
        },
        "data": {
            "data_dir": str(synthetic_root),
            "synthetic": None,
            "num_workers": 0,
            "batch_size": 2,
            "eval_batch_size": 2,
            "max_samples": 8,
        },  # fmt: skip
        "trainer": {
            "max_steps": 1,
            "val_check_interval": 1,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp),
            "logger": False,
            "callbacks": callbacks(tmp / "ckpt", "val/accuracy", "max", every_n_train_steps=1),
        },
    }
    cfg = write(tmp / "grpo.yaml", config)
    fitted = main(["fit", "--config", GRPO, "--config", cfg])
    return tmp, cfg, own(fitted.model.hparams)


def test_grpo_checkpoint_by_path_last_and_best(grpo_run, tmp_path, synthetic_root, tiny_model_dir, capsys):
    """The three commands of issue 16 §7 that failed on GRPO's hyperparameters, and the aliases."""
    tmp, cfg, trained = grpo_run
    last = str(tmp / "ckpt" / "last.ckpt")
    assert (tmp / "ckpt" / "best-step=1.ckpt").is_file()
    evaluated = main(["test", "--config", EVAL, "--config", eval_overlay(tmp_path, synthetic_root, tiny_model_dir),
                      "--ckpt_path", last])  # fmt: skip
    assert type(evaluated.model).__name__ == "GRPOModule" and own(evaluated.model.hparams) == trained
    main(["export", "--config", GRPO, "--config", cfg, "--ckpt_path", last, "--out_dir", str(tmp_path / "m")])
    main(["export", "--config", GRPO, "--config", cfg, "--ckpt_path", "best", "--out_dir", str(tmp_path / "b")])
    printed = capsys.readouterr().out
    assert f"from {last} to" in printed and f"from {tmp / 'ckpt' / 'best-step=1.ckpt'} to" in printed
    resumed = main(["fit", "--config", GRPO, "--config", cfg, "--ckpt_path", last, "--trainer.max_steps", "2"])
    assert resumed.trainer.global_step == 2 and own(resumed.model.hparams) == trained


def test_roi_classifier_checkpoint_by_path_last_and_best(tmp_path, synthetic_root, capsys):
    config = {
        "model": {"init_args": {"backbone": "test_resnet", "image_size": 32}},
        "data": {
            "init_args": {
                "data_dir": str(synthetic_root),
                "synthetic": None,
                "image_size": 32,
                "slices_per_volume": 2,
                "batch_size": 2,
                "num_workers": 0,
            }
        },  # fmt: skip
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "logger": False,
            "callbacks": callbacks(tmp_path / "ckpt", "val/loss", "min", every_n_train_steps=1),
        },
    }
    cfg = write(tmp_path / "roi.yaml", config)
    trained = own(main(["fit", "--config", ROI, "--config", cfg]).model.hparams)
    last = str(tmp_path / "ckpt" / "last.ckpt")
    validated = main(["validate", "--config", ROI, "--config", cfg, "--ckpt_path", last])
    assert own(validated.model.hparams) == trained
    validated = main(["validate", "--config", ROI, "--config", cfg, "--ckpt_path", "best"])
    assert validated.trainer.ckpt_path == str(tmp_path / "ckpt" / "best-step=2.ckpt")
    resumed = main(["fit", "--config", ROI, "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    assert resumed.trainer.current_epoch == 2 and own(resumed.model.hparams) == trained
    # It has no Hugging Face model to export: said in one line.
    assert run(["export", "--config", ROI, "--config", cfg, "--ckpt_path", last]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: export writes a Hugging Face model directory; ROIClassifierModule has none"
    )


def test_evaluator_checkpoint_round_trips(tmp_path, synthetic_root, tiny_model_dir):
    cfg = eval_overlay(tmp_path, synthetic_root, tiny_model_dir)
    first = main(["test", "--config", EVAL, "--config", cfg, "--model.init_args.max_new_tokens", "3"])
    first.trainer.save_checkpoint(tmp_path / "evaluator.ckpt")
    again = main(["test", "--config", EVAL, "--config", cfg, "--ckpt_path", str(tmp_path / "evaluator.ckpt")])
    assert type(again.model).__name__ == "VQAEvaluator"
    assert own(again.model.hparams) == own(first.model.hparams) and again.model.hparams.max_new_tokens == 3


def test_the_starting_model_is_best_unless_a_checkpoint_beats_it(sft_run, tmp_path, caplog):
    from training.checkpoint_selection import record_start, recorded_score

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    best = ckpt / "best-step=4.ckpt"
    best.write_bytes((sft_run[0] / "ckpt" / "best-step=4.ckpt").read_bytes())
    score = recorded_score(best, "train/lr")
    start_model = load_checkpoint(best)["hyper_parameters"]["model_path"]
    record_start(ckpt, "train/lr", score, start_model)
    assert best_checkpoint(ckpt, "train/lr", "max") is None  # a tie: the fit did not beat its start
    assert "no gain over the starting model on validation" in caplog.text
    assert best_checkpoint(ckpt, "train/lr", "min") is None
    record_start(ckpt, "train/lr", score - 1e-6, start_model)
    assert best_checkpoint(ckpt, "train/lr", "max") == best
    record_start(ckpt, "train/lr", score + 1.0, "another/model")  # another run's start: not this fit's
    assert best_checkpoint(ckpt, "train/lr", "max") == best


def test_validate_of_the_starting_model_records_its_score(tmp_path, synthetic_root, tiny_model_dir):
    kind = "training.checkpointing.ResumableCheckpoint"
    candidate = {"dirpath": str(tmp_path / "ckpt"), "monitor": "val/accuracy", "mode": "max", "start_candidate": True}
    config = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "build_embedded_if_missing": False}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "max_samples": 4},
        "trainer": {
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "logger": False,
            "callbacks": [{"class_path": kind, "init_args": candidate}],
        },
    }
    config["model"]["init_args"]["max_new_tokens"] = 4
    validated = main(["validate", "--config", SFT, "--config", write(tmp_path / "sft.yaml", config)])
    record = json.loads((tmp_path / "ckpt" / "start.json").read_text())
    accuracy = float(validated.trainer.callback_metrics["val/accuracy"])
    assert record == {"monitor": "val/accuracy", "score": accuracy, "model_path": str(tiny_model_dir)}
    with pytest.raises(ValueError, match="start_candidate needs a monitor"):
        main(["validate", "--config", SFT, "--config", write(tmp_path / "bad.yaml", config),
              "--trainer.callbacks+=training.checkpointing.ResumableCheckpoint",
              "--trainer.callbacks.start_candidate=true"])  # fmt: skip
