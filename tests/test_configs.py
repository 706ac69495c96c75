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
