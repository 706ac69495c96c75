"""Qwen2.5-VL (the embedded default; Lingshu): multimodal rotary positions from the model's ``get_rope_index``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from models.families.base import VLMFamily


def rope_core(model: torch.nn.Module) -> torch.nn.Module:
    """The inner module with ``get_rope_index`` (e.g. ``Qwen2_5_VLModel``), under any LoRA/FSDP wrapping."""
    for module in model.modules():
        if hasattr(module, "get_rope_index"):
            return module
    raise TypeError(f"{type(model).__name__} has no multimodal rotary positions (get_rope_index)")


class QwenVLFamily(VLMFamily):
    """M-RoPE: (temporal, height, width) positions, (3, B, T), image tokens laid out on their grid."""

    name: ClassVar[str] = "qwen2_5_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl",)
    trainable: ClassVar[bool] = True
    vision_modules: ClassVar[tuple[str, ...]] = ("visual",)

    def prompt_positions(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Multimodal rotary positions of the prompts, (3, B, T), and each prompt's next text position, (B,)."""
        mask = batch["prompt_attention_mask"]
        positions, _ = rope_core(model).get_rope_index(
            batch["prompt_input_ids"],
            mm_token_type_ids=batch["prompt_mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=mask,
        )
        next_position = positions.masked_fill(mask.unsqueeze(0) == 0, -1).amax(dim=(0, 2)) + 1
        return positions, next_position


FAMILY = QwenVLFamily()
