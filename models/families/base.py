"""What the training and decoding code needs to know about a VLM family, behind one interface.

A family adapter says how to build rotary positions for a prompt and its completions, how to repeat a prompt's
cache for its G completions, which modules FSDP2 shards one at a time, which modules LoRA targets and which form
the vision side (frozen by ``freeze_vision``, never LoRA-wrapped), and how GRPO's grouped forward records a
prompt's cache and shares it with its completions under autograd (``prompt_cache``, ``completion_cache``). The base
class is any ``AutoModelForImageTextToText`` model with 1-D text positions: enough to evaluate it; families that
train subclass it (``models/families/``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers.cache_utils import Cache

from models.cache_layers import ReplaySafeLayer

# Language-model projections of every decoder layer (attention and MLP), the names of Qwen, Llama, Gemma.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Module-name parts of vision towers and projectors across transformers' VLMs.
DEFAULT_VISION_MODULES = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "connector")


class VLMFamily:
    """The defaults: text-only (1-D) positions; a prompt cache of attention layers; evaluation only."""

    name: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()  # ``config.model_type`` values of this family
    trainable: ClassVar[bool] = False  # SFT and GRPO are tested on it
    lora_targets: ClassVar[tuple[str, ...]] = DEFAULT_LORA_TARGETS
    vision_modules: ClassVar[tuple[str, ...]] = DEFAULT_VISION_MODULES
    block_suffixes: ClassVar[tuple[str, ...]] = ("DecoderLayer", "VisionBlock")  # without _no_split_modules

    def prompt_positions(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary positions of the left-padded prompts, (B, T), and each prompt's next text position, (B,).

        As ``generate`` counts them: from 0 at the first real token (padding gets 0).
        """
        mask = batch["prompt_attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, mask.long().sum(-1)

    def repeat_cache(self, cache: Cache, repeats: int) -> None:
        """Repeat every row of a prompt's ``cache`` ``repeats`` times, in place (rows i·G … i·G + G − 1)."""
        cache.batch_repeat_interleave(repeats)

    def static_cache(self, model: torch.nn.Module, max_cache_len: int) -> Cache | None:
        """An empty preallocated cache of ``max_cache_len`` positions (transformers' ``StaticCache``), whose decode
        steps all have the same shapes (``rl/decode_steps.py``); None where this family's cache cannot be static
        (the sampler then keeps the dynamic cache): models with sliding-window layers (Gemma 3), whose prompt
        cache keeps only the window's last positions, with offsets that a copy would have to rebuild."""
        from transformers import StaticCache

        cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        return None if any(getattr(layer, "is_sliding", False) for layer in cache.layers) else cache

    def prompt_cache(self, model: torch.nn.Module, checkpointing: bool) -> Cache | None:
        """The cache a prompt's forward records into when its completions follow with gradients: None (the
        model's own) or, under gradient checkpointing, one whose replay in backward changes nothing."""
        return Cache(layer_class_to_replicate=ReplaySafeLayer) if checkpointing else None

    def completion_cache(self, cache: Cache, index: torch.Tensor, checkpointing: bool) -> Cache:
        """The prompt's ``cache`` indexed to completion rows ``index``, for a forward with gradients through it:
        the cache itself, indexed in place, or under checkpointing replay-safe copies of its layers."""
        if checkpointing:
            return Cache(layers=[ReplaySafeLayer((layer.keys[index], layer.values[index])) for layer in cache.layers])
        cache.batch_select_indices(index)
        return cache

    def shardable_blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The units FSDP2 gathers one at a time: the classes transformers never splits across devices
        (``_no_split_modules``: decoder layers, vision blocks), else every ``…DecoderLayer``/``…VisionBlock``."""
        names = set(getattr(model, "_no_split_modules", None) or ())
        chosen = [
            (name.count("."), module)
            for name, module in model.named_modules()
            if (type(module).__name__ in names if names else type(module).__name__.endswith(self.block_suffixes))
        ]
        # Deepest first (a stable sort keeps the model's order among equals): FSDP2 shards a module inside another
        # chosen one before its parent.
        return [module for _, module in sorted(chosen, key=lambda pair: -pair[0])]

    def is_vision(self, parameter_name: str) -> bool:
        """Whether a parameter (or module) name belongs to the vision tower or its projector."""
        parts = parameter_name.split(".")
        return any(part in self.vision_modules for part in parts)

    def lora_regex(self, targets: tuple[str, ...] | list[str] | None) -> str:
        """peft's ``target_modules`` as a full-match regex: ``targets`` (None: this family's) in the language model
        only, so the vision tower's identically named projections stay untouched."""
        names = "|".join(targets or self.lora_targets)
        vision = "|".join(self.vision_modules)
        return rf"^(?!.*\.({vision})\.)(?!({vision})\.).*\.({names})$"
