"""Qwen3.5: M-RoPE positions as Qwen3-VL, but a hybrid decoder: three Gated-DeltaNet (linear attention) layers for
each full-attention layer. Their cache is a fixed-size convolution window and a recurrent state per row, not keys
and values, so sharing a prompt's cache among its G completions shares those states too (exact: they are a
function of the prompt alone). transformers updates them in place, which autograd cannot differentiate through
once a completion forward has read them, and a checkpointed replay would continue from them. So GRPO's grouped
forward records the prompt's states without storing over them (``RecordingLinearAttentionLayer``) and hands the
completions ``PrefixLinearAttentionLayer``s holding them, indexed to their rows (``models/cache_layers.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers.cache_utils import Cache, LinearAttentionLayer

from models.cache_layers import PrefixLinearAttentionLayer, RecordingLinearAttentionLayer, ReplaySafeLayer
from models.families.base import DEFAULT_LORA_TARGETS
from models.families.qwen2_5_vl import QwenVLFamily


class Qwen3_5Family(QwenVLFamily):
    name: ClassVar[str] = "qwen3_5"
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_5", "qwen3_5_moe")
    # The linear-attention layers' projections too (the full-attention layers have the usual q/k/v/o).
    lora_targets: ClassVar[tuple[str, ...]] = (*DEFAULT_LORA_TARGETS, "in_proj_qkv", "in_proj_z", "out_proj")

    def prompt_cache(self, model: torch.nn.Module, checkpointing: bool) -> Cache:
        types = model.config.get_text_config().layer_types
        return Cache(
            layers=[RecordingLinearAttentionLayer() if t == "linear_attention" else ReplaySafeLayer() for t in types]
        )

    def completion_cache(self, cache: Cache, index: torch.Tensor, checkpointing: bool) -> Cache:
        layers = []
        for layer in cache.layers:
            if isinstance(layer, RecordingLinearAttentionLayer):
                conv, recurrent = layer.recorded["conv"], layer.recorded["recurrent"]
                layers.append(PrefixLinearAttentionLayer(conv[index], recurrent[index]))
            else:
                layers.append(ReplaySafeLayer((layer.keys[index], layer.values[index])))
        return Cache(layers=layers)

    def static_cache(self, model: torch.nn.Module, max_cache_len: int) -> Cache | None:
        """None: the sampler's linear-attention layers (``models/cache_layers.py``: the repeated conv window and
        recurrent state) are not copied into a static cache yet, so decoding keeps the dynamic cache."""
        return None

    def repeat_cache(self, cache: Cache, repeats: int) -> None:
        """As the base class, but transformers' linear-attention layers have no ``batch_repeat_interleave``: their
        convolution windows and recurrent states are repeated here, with the attention layers' keys and values."""
        for layer in cache.layers:
            if isinstance(layer, LinearAttentionLayer):
                for states in (layer.conv_states, layer.recurrent_states):
                    for key, value in states.items():
                        if value is not None:
                            states[key] = value.repeat_interleave(repeats, dim=0)
            if hasattr(layer, "keys") and layer.is_initialized:  # attention (or hybrid) layers
                layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
                layer.values = layer.values.repeat_interleave(repeats, dim=0)


FAMILY = Qwen3_5Family()
