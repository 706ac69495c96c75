"""`cli.py` as a user meets it: debug runs leave nothing behind, input errors are one line, `ask --help`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cli import ConfigError, main, run
from tests.datamodules.test_user_volume import lps_volume, write_dicom

ROOT = Path(__file__).resolve().parents[1]
SFT, EVAL, GRPO = (str(ROOT / "configs" / f"{name}.yaml") for name in ("sft", "eval", "grpo"))


def write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_fast_dev_run_leaves_nothing_behind(tmp_path, synthetic_root, tiny_model_dir):
    """No checkpoint, config.yaml, log, evaluation folder or predictions file: the next real run finds the
    folders as they were (a fit would refuse a folder holding a debug run's last.ckpt)."""
    run_dir = tmp_path / "runs"
    data = {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "max_samples": 4}
    sft = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "build_embedded_if_missing": False}},
        "data": {**data, "batch_size": 2, "eval_batch_size": 2},
        "trainer": {
            "enable_progress_bar": False,
            "default_root_dir": str(run_dir / "sft"),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir)}},
            "callbacks": [
                {
                    "class_path": "training.checkpointing.ResumableCheckpoint",
                    "init_args": {"dirpath": str(run_dir / "sft" / "ckpt"), "monitor": "val/accuracy", "mode": "max"},
                },
                {
                    "class_path": "training.checkpointing.ResumableCheckpoint",
                    "init_args": {"dirpath": str(run_dir / "sft" / "ckpt"), "save_top_k": 0, "save_last": True},
                },
            ],
        },
    }
    fitted = main(
        ["fit", "--config", SFT, "--config", write(tmp_path / "sft.yaml", sft), "--trainer.fast_dev_run", "1"]
    )
    assert fitted.trainer.global_step == 1
    evaluation = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 2}},
        "data": data,
        "trainer": {
            "enable_progress_bar": False,
            "callbacks": [
                {
                    "class_path": "evaluation.callbacks.EvaluationReport",
                    "init_args": {"out_dir": str(run_dir / "eval")},
                },
                {
                    "class_path": "evaluation.callbacks.PredictionWriter",
                    "init_args": {"path": str(run_dir / "predict" / "predictions.jsonl")},
                },
            ],
        },
    }
    cfg = write(tmp_path / "eval.yaml", evaluation)
    for command in ("test", "predict"):
        main([command, "--config", EVAL, "--config", cfg, "--trainer.fast_dev_run", "1"])
    assert [p for p in run_dir.rglob("*") if p.is_file()] == []


def test_input_errors_are_one_line_and_a_nonzero_exit(tmp_path, synthetic_root, tiny_model_dir, capsys):
    """A DICOM folder with a missing slice, a volume that does not exist, a value a module refuses: one line
    naming the problem, exit status 2, no traceback (``--debug`` gives it back)."""
    gap = tmp_path / "series"
    write_dicom(gap, lps_volume())[3].unlink()
    overlay = {
        "model": {"init_args": {"model_path": str(tiny_model_dir), "max_new_tokens": 2}},
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "image_size": 56},
    }
    ask = ["ask", "--config", EVAL, "--config", write(tmp_path / "o.yaml", overlay), "--question", "Nodule?"]

    assert run([*ask, "--volume", str(gap)]) == 2
    err = capsys.readouterr().err  # the model's loading bar may come first
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"error: {gap}: uneven slice spacing, 5 mm between IM100.dcm and IM102.dcm where the rest are 2.5 mm "
        "(missing slices?)"
    )
    assert run([*ask, "--volume", str(tmp_path / "nowhere.nii.gz")]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"error: {tmp_path / 'nowhere.nii.gz'}: file or folder not found"
    )
    with pytest.raises(SystemExit) as done:  # refused by the parser, which exits itself
        run([*ask, "--volume", str(gap), "--model.init_args.sdpa_backends", '["fastest"]'])
    assert done.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith('error: Parser key "model": ')
    assert 'Parser key "sdpa_backends": Expected a typing.Literal' in err[0] and "Got value: fastest" in err[0]

    try:
        run(["--debug", *ask, "--volume", str(gap)])
    except Exception as error:  # noqa: BLE001 - the point is which error comes back
        assert type(error).__name__ == "BadSampleError"
    else:
        raise AssertionError("--debug should re-raise the input error")


def test_a_malformed_config_value_is_one_line_from_the_program(tmp_path):
    """jsonargparse's report (the whole usage, then the error on two lines) becomes one line, status 2."""
    cmd = [sys.executable, "cli.py", "fit", "--config", SFT, "--trainer.max_steps", "many"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert lines == [
        "error: Parser key \"trainer.max_steps\": Expected a <class 'int'>. Got value: many "
        "(options: cli.py fit --help)"
    ]
    assert "usage:" not in done.stderr


def test_ask_help_shows_its_own_arguments_first(capsys):
    try:
        main(["ask", "--help"])
    except SystemExit as done:
        assert done.code in (0, None)
    out = capsys.readouterr().out
    assert out.index("--volume VOLUME") < out.index("--trainer.accelerator")
    usage = out[: out.index("\n\n")]
    assert usage.split()[4:8] == ["--volume", "VOLUME", "--question", "QUESTION"]


def test_a_setting_or_module_where_it_was_before_the_renovation_is_refused_naming_its_new_place(tmp_path, capsys):
    """Before jsonargparse sees the config (whose message would be a list of accepted keys): one line, status 2."""
    old_key = write(tmp_path / "old_key.yaml", {"model": {"init_args": {"temperature": 0.7}}})
    assert run(["fit", "--config", GRPO, "--config", old_key]) == 2
    moved = "model.init_args.temperature moved to model.init_args.generation.temperature"
    assert capsys.readouterr().err.splitlines() == [f"error: {old_key}: {moved}"]
    assert run(["fit", "--config", GRPO, "--model.init_args.beta", "0.1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: command line: model.init_args.beta moved to model.init_args.loss.beta"
    ]
    old_path = "lightning_modules.checkpointing.ResumableCheckpoint"
    callbacks = write(tmp_path / "old_module.yaml", {"trainer": {"callbacks": [{"class_path": old_path}]}})
    assert run(["fit", "--config", SFT, "--config", callbacks]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {callbacks}: {old_path} moved to training.checkpointing.ResumableCheckpoint"
    ]
    roi = "datamodules.roi_sources.CAMROI"
    assert run(["fit", "--config", SFT, "--data.roi_source", roi]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: command line: {roi} moved to lightning_modules.roi_classifier.CAMROI"
    ]


def test_a_grpo_checkpoint_with_flat_settings_is_refused_naming_the_new_place(tmp_path, capsys):
    """A checkpoint written before the sections: LightningCLI would hand its flat hyperparameters to GRPOModule."""
    old = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"model_path": "artifacts/sft-model", "beta": 0.04, "num_generations": 8}}, old)
    assert run(["validate", "--config", GRPO, "--ckpt_path", str(old)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {old}: written before GRPO's settings moved into sections")
    assert "(hyper_parameters.beta is now model.init_args.loss.beta)" in err[0]


def test_the_moved_keys_are_refused_only_for_the_grpo_module():
    """Every moved key is named by its section; a module that never had them (SFT) is left to jsonargparse."""
    from cli import refuse_moved_settings
    from rl.config import MOVED_KEYS

    assert MOVED_KEYS["epsilon_high"] == "loss.epsilon_high" and MOVED_KEYS["top_k"] == "generation.top_k"
    refuse_moved_settings(["fit", "--config", SFT, "--model.init_args.temperature", "0.5"])
    refuse_moved_settings(["fit", "--config", GRPO, "--model.init_args.generation.temperature=0.5"])
    with pytest.raises(ConfigError, match="model.init_args.top_k moved to model.init_args.generation.top_k"):
        refuse_moved_settings(
            {"fit": {"model": {"class_path": "lightning_modules.grpo.GRPOModule", "init_args": {"top_k": 3}}}}
        )


def test_every_moved_path_points_at_something_that_imports():
    """The map of moved modules and names: each new place exists, and a name whose module split goes to its own."""
    import importlib

    from training.config_moves import MOVED_PATHS, moved_path

    for new in MOVED_PATHS.values():
        module, _, name = new.rpartition(".")
        try:
            importlib.import_module(new)
        except ImportError:
            assert hasattr(importlib.import_module(module), name), new
    assert moved_path("lightning_modules.rollout.grouped_forward") == "rl.grouped_forward.grouped_forward"
    assert moved_path("lightning_modules.rollout.sample_completions") == "rl.sampling.sample_completions"
    assert moved_path("models.loading") is None
