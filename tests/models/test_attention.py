"""SDPA kernel choice: cuDNN attention off by default, set from the modules' ``sdpa_backends`` argument."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_modules.evaluator import VQAEvaluator
from lightning_modules.grpo import GRPOModule
from models.attention import set_sdpa_backends

FLAGS = {
    "flash": torch.backends.cuda.flash_sdp_enabled,
    "efficient": torch.backends.cuda.mem_efficient_sdp_enabled,
    "cudnn": torch.backends.cuda.cudnn_sdp_enabled,
    "math": torch.backends.cuda.math_sdp_enabled,
}


@pytest.fixture(autouse=True)
def restore_flags() -> Iterator[None]:
    """The switches are process-wide: leave them as the next test expects."""
    before = [name for name, enabled in FLAGS.items() if enabled()]
    yield
    set_sdpa_backends(before)


def enabled() -> set[str]:
    return {name for name, flag in FLAGS.items() if flag()}


def test_default_leaves_out_cudnn_and_explicit_lists_are_exact() -> None:
    assert set_sdpa_backends(None) == ("flash", "efficient", "math")
    assert enabled() == {"flash", "efficient", "math"}
    set_sdpa_backends(["cudnn", "math"])
    assert enabled() == {"cudnn", "math"}
    set_sdpa_backends(["flash", "efficient", "cudnn", "math"])
    assert enabled() == set(FLAGS)


@pytest.mark.parametrize("bad", [["flash", "fast"], []])
def test_unknown_or_empty_lists_are_refused(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="sdpa_backends"):
        set_sdpa_backends(bad)


def test_configure_model_applies_the_modules_setting(tiny_model_dir: Path) -> None:
    set_sdpa_backends(["flash", "efficient", "cudnn", "math"])
    module = GRPOModule(model_path=str(tiny_model_dir), sdpa_backends=["efficient", "math"])
    module.configure_model()
    assert enabled() == {"efficient", "math"}
    # The evaluator (no argument given) goes back to the default, without cuDNN.
    VQAEvaluator(model_path=str(tiny_model_dir)).configure_model()
    assert enabled() == {"flash", "efficient", "math"}


def test_math_only_gives_the_same_logits_on_cpu(tiny_model_dir: Path) -> None:
    """On CPU the switches must not change results: the tests' numbers stay comparable across settings."""
    from models.loading import load_model

    model = load_model(tiny_model_dir).eval()
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        set_sdpa_backends(None)
        a = model(input_ids=ids).logits
        set_sdpa_backends(["math"])
        b = model(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
