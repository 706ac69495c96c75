"""Every shipped config parses against the code's signatures (a renamed argument breaks this, not a user's run), and
the config groups compose: training and evaluation resolve the same data file (litgpt's tests/test_config_hub.py)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Every command-line config, alone or on the config it overlays (the overlays' own comments name their base).
CLI_CASES = [
    ["sft.yaml"],
    ["eval.yaml"],
    ["eval_18label.yaml"],
    ["sft.yaml", "sft_tiny_gpu_fsdp.yaml"],
    ["sft_qwen2.5vl_3b_fsdp.yaml"],
    ["grpo.yaml"],
    ["grpo_qwen2.5vl_3b_fsdp.yaml"],
    ["grpo_qwen2.5vl_3b_fsdp.yaml", "grpo_vllm.yaml"],
    ["roi_classifier.yaml"],
    ["sft.yaml", "annotation/sft_cold_start.yaml"],
    ["grpo.yaml", "annotation/grpo_answers_only.yaml"],
    ["sft.yaml", "loggers/wandb.yaml"],
    ["grpo.yaml", "loggers/mlflow.yaml"],
]
DATA_FILES = sorted(p.name for p in (CONFIGS / "data").glob("*.yaml"))
# Experiment specs (python -m experiments.replicate), alone or on the spec they overlay.
EXPERIMENT_CASES = [
    ["replication.yaml"],
    ["annotation_efficiency.yaml"],
    ["replication.yaml", "roi_sources.yaml"],
    ["replication.yaml", "views.yaml"],
]
OTHER = {
    "experiments/roi_proposals.yaml": "tests/datamodules/test_roi_sources.py (evaluation.roi_proposals' own parser)",
    "experiments/baselines.yaml": "tests/experiments/test_baselines.py (experiments.baselines' own loader)",
}


def resolved(*args: str) -> dict[str, Any]:
    """The config ``cli.py ARGS --print_config`` resolves (every default filled in, group files read)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def contains(full: Any, given: Any) -> bool:
    """``given``'s every key, at every depth, has its value in ``full`` (which may hold more: defaults)."""
    if isinstance(given, dict):
        return isinstance(full, dict) and all(k in full and contains(full[k], v) for k, v in given.items())
    return full == given


def configs(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--config", str(CONFIGS / name))]


def test_every_shipped_config_is_exercised():
    exercised = {name for case in CLI_CASES for name in case}
    exercised |= {f"data/{name}" for name in DATA_FILES}
    exercised |= {f"experiments/{name}" for case in EXPERIMENT_CASES for name in case}
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert shipped - exercised - set(OTHER) == set()


@pytest.mark.parametrize("files", CLI_CASES)
def test_config_parses(files, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", *configs(*files), "--print_config"])
    assert done.value.code in (0, None)
    assert "class_path: lightning_modules." in capsys.readouterr().out


@pytest.mark.parametrize("name", DATA_FILES)
def test_data_file_is_the_data_of_an_evaluation(name):
    """``cli.py test --config configs/eval.yaml --data configs/data/NAME``: every key of the file is what the
    datamodule gets (a data file given on the command line replaces the config's key by key)."""
    path = CONFIGS / "data" / name
    data = resolved("test", *configs("eval.yaml"), "--data", str(path))["data"]
    assert data["class_path"] == "datamodules.ct_vqa.CTVQADataModule"
    assert contains(data["init_args"], yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("data_file", "commands"),
    [
        ("ct_vqa.yaml", [("fit", "sft.yaml"), ("fit", "grpo.yaml"), ("test", "eval.yaml")]),
        ("ct_rate.yaml", [("fit", "sft_qwen2.5vl_3b_fsdp.yaml"), ("fit", "grpo_qwen2.5vl_3b_fsdp.yaml")]),
    ],
)
def test_training_and_evaluation_load_the_same_data_file(data_file, commands):
    """The configs name one data file (``data: data/NAME``) instead of copies that had to be kept in sync by hand."""
    for _, name in commands:
        assert yaml.safe_load((CONFIGS / name).read_text())["data"] == f"data/{data_file}", name
    data = [resolved(command, *configs(name))["data"] for command, name in commands]
    assert all(d == data[0] for d in data[1:])


def test_a_data_file_named_in_a_config_is_found_from_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolved("fit", *configs("sft.yaml"))["data"]["init_args"]["image_size"] == 112


@pytest.mark.parametrize("files", EXPERIMENT_CASES)
@pytest.mark.parametrize("smoke", [False, True])
def test_experiment_spec_loads_and_names_shipped_configs(files, smoke):
    from experiments.replicate import load_experiment

    exp = load_experiment([str(CONFIGS / "experiments" / name) for name in files], smoke=smoke)
    assert exp.arms and exp.seeds
    for stage in exp.stages.values():
        assert (ROOT / stage["config"]).is_file(), stage["config"]


CSV, TENSORBOARD = "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger"
TRAINING = ["sft.yaml", "grpo.yaml", "sft_qwen2.5vl_3b_fsdp.yaml", "grpo_qwen2.5vl_3b_fsdp.yaml"]


@pytest.mark.parametrize("name", TRAINING)
def test_training_logs_csv_and_tensorboard_in_its_run_folder(name):
    """metrics.csv stays where resumes and experiments read it (<run>/logs/version_N); TensorBoard files sit
    beside it (<run>/tb/version_N): one name each, as two loggers of one name would count versions apart."""
    csv, tb = resolved("fit", *configs(name))["trainer"]["logger"]
    assert (csv["class_path"], tb["class_path"]) == (CSV, TENSORBOARD)
    assert (
        csv["init_args"]["save_dir"]
        == tb["init_args"]["save_dir"]
        == yaml.safe_load((CONFIGS / name).read_text())["trainer"]["default_root_dir"]
    )
    assert (csv["init_args"]["name"], tb["init_args"]["name"]) == ("logs", "tb")


@pytest.mark.parametrize(("overlay", "added"), [("wandb.yaml", "WandbLogger"), ("mlflow.yaml", "MLFlowLogger")])
def test_a_logger_overlay_adds_to_the_loggers(overlay, added):
    """configs/loggers/*.yaml append (``logger+:``): CSV and TensorBoard keep logging; W&B / MLflow need not be
    installed to resolve the config (they are imported only when the logger starts)."""
    loggers = resolved("fit", *configs("sft.yaml", f"loggers/{overlay}"))["trainer"]["logger"]
    assert [lg["class_path"] for lg in loggers] == [CSV, TENSORBOARD, f"lightning.pytorch.loggers.{added}"]


def test_no_setting_name_is_shared_by_a_module_and_the_datamodule():
    """Lightning refuses to log hyperparameters when a LightningModule and the datamodule both have a name with
    different values (e.g. a GRPO `seed` and the data `seed`), so every fit would fail once they differ."""
    import inspect

    from datamodules.ct_vqa import CTVQADataModule
    from lightning_modules.evaluator import VQAEvaluator
    from lightning_modules.grpo import GRPOModule
    from lightning_modules.sft import SFTModule

    data = set(inspect.signature(CTVQADataModule).parameters)
    for module in (SFTModule, GRPOModule, VQAEvaluator):
        assert not data & set(inspect.signature(module).parameters), module.__name__
