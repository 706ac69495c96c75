"""The vLLM rollout engine without vLLM: the install hint, and GRPO training on an engine's tokens."""

from __future__ import annotations

import importlib.util

import pytest

from datamodules.processor import load_processor
from lightning_modules.grpo import GRPOModule
from rl.vllm_io import rollout_from_token_lists
from rl.vllm_rollout import VLLMRollout
from tests.rl.test_vllm_io import datamodule


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_error_says_how_to_install_it(tiny_model_dir):
    module = GRPOModule(model_path=str(tiny_model_dir), rollout_engine=VLLMRollout())
    with pytest.raises(ImportError, match="pip install vllm"):
        module.rollout_engine.setup(module)


def test_grpo_trains_on_the_engines_tokens(synthetic_root, tiny_model_dir):
    """With a rollout engine, GRPOModule takes its completions instead of sampling (here an engine whose
    ``sample`` returns fixed answers, standing in for vLLM's ``generate``)."""
    tokenizer = load_processor(tiny_model_dir).tokenizer
    answer = tokenizer("<think>left lung</think><answer>yes</answer>", add_special_tokens=False)["input_ids"]

    class FixedAnswers(VLLMRollout):
        def sample(self, module, batch, num_generations, sampling, seed):
            n = len(batch["meta"]) * num_generations
            return rollout_from_token_lists([answer + module.end_tokens[:1]] * n, num_generations, module.end_tokens, 0)

    module = GRPOModule(model_path=str(tiny_model_dir), rollout_engine=FixedAnswers())
    module.configure_model()
    batch = next(iter(datamodule(synthetic_root, tiny_model_dir).train_dataloader()))
    rollout, texts = module.rollout(batch, 2, seed=0)
    assert texts == ["<think>left lung</think><answer>yes</answer>"] * 6
    assert not rollout.is_truncated.any() and rollout.completion_mask.sum(1).tolist() == [len(answer) + 1] * 6
