"""Qwen3.5: M-RoPE positions as Qwen3-VL, but a hybrid decoder: three Gated-DeltaNet (linear attention) layers for
each full-attention layer. Their cache is a fixed-size convolution window and recurrent state per row, not keys
and values, so repeating a prompt's cache for its G completions repeats those states too (exact: they are a
function of the prompt alone). GRPO's training forward does not share the prompt with gradients for this family:
transformers updates those states in place, which autograd cannot replay, so it runs repeated rows
(``shared_prefill = False``); sampling still prefills each prompt once.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers.cache_utils import Cache, LinearAttentionLayer

from models.families.base import DEFAULT_LORA_TARGETS
from models.families.qwen2_5_vl import QwenVLFamily


def _index_states(layer: LinearAttentionLayer, index: torch.Tensor) -> None:
    for states in (layer.conv_states, layer.recurrent_states):
        for key, value in states.items():
            if value is not None:
                states[key] = value[index]


class Qwen3_5Family(QwenVLFamily):
    name: ClassVar[str] = "qwen3_5"
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_5", "qwen3_5_moe")
    shared_prefill: ClassVar[bool] = False
    # The linear-attention layers' projections too (the full-attention layers have the usual q/k/v/o).
    lora_targets: ClassVar[tuple[str, ...]] = (*DEFAULT_LORA_TARGETS, "in_proj_qkv", "in_proj_z", "out_proj")

    def select_cache(self, cache: Cache, index: torch.Tensor) -> None:
        for layer in cache.layers:
            if isinstance(layer, LinearAttentionLayer):
                _index_states(layer, index)
            if hasattr(layer, "keys") and layer.is_initialized:  # attention (or hybrid) layers
                layer.keys, layer.values = layer.keys[index], layer.values[index]

    def repeat_cache(self, cache: Cache, repeats: int) -> None:
        rows = cache.layers[0]
        states = (
            rows.keys
            if hasattr(rows, "keys") and rows.is_initialized
            else next(v for v in (*rows.conv_states.values(), *rows.recurrent_states.values()) if v is not None)
        )
        index = torch.arange(states.size(0), device=states.device).repeat_interleave(repeats)
        self.select_cache(cache, index)


FAMILY = Qwen3_5Family()
