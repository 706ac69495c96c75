"""Every shipped config parses against the code's signatures (a renamed argument breaks this, not a user's run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "files",
    [
        ["sft.yaml"],
        ["eval.yaml"],
        ["sft.yaml", "sft_tiny_gpu_fsdp.yaml"],
        ["sft_qwen2.5vl_3b_fsdp.yaml"],
        ["grpo.yaml"],
        ["grpo_qwen2.5vl_3b_fsdp.yaml"],
        ["grpo_qwen2.5vl_3b_fsdp.yaml", "grpo_vllm.yaml"],
        ["roi_classifier.yaml"],
        ["sft.yaml", "annotation/sft_cold_start.yaml"],
        ["grpo.yaml", "annotation/grpo_answers_only.yaml"],
    ],
)
def test_config_parses(files, capsys):
    args = ["fit"]
    for name in files:
        args += ["--config", str(CONFIGS / name)]
    with pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    assert done.value.code in (0, None)
    assert "class_path: lightning_modules." in capsys.readouterr().out


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
