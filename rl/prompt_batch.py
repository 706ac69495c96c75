"""The prompts of a collated CT-VQA batch as rows: repeated G times (one row per completion), sliced to a
micro-batch with exactly their images' patches, and their multimodal rotary positions."""

from __future__ import annotations

from typing import Any

import torch

# What a collated batch holds for its prompts: token ids, masks, and one image per row.
PROMPT_KEYS = (
    "prompt_input_ids",
    "prompt_attention_mask",
    "prompt_mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
)


def vl_core(model: torch.nn.Module) -> torch.nn.Module:
    """The inner ``Qwen2_5_VLModel`` (the module with ``get_rope_index``), under any LoRA/FSDP wrapping.

    Raises TypeError when ``model`` has no such module (not a Qwen-VL model)."""
    for module in model.modules():
        if hasattr(module, "get_rope_index"):
            return module
    raise TypeError(f"{type(model).__name__} has no multimodal rotary positions (get_rope_index); not a Qwen-VL model")


def prompt_positions(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal rotary positions of the prompts, (3, B, T), and each prompt's next text position, (B,)."""
    mask = batch["prompt_attention_mask"]
    positions, _ = vl_core(model).get_rope_index(
        batch["prompt_input_ids"],
        mm_token_type_ids=batch["prompt_mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=mask,
    )
    next_position = positions.masked_fill(mask.unsqueeze(0) == 0, -1).amax(dim=(0, 2)) + 1
    return positions, next_position


def repeat_prompts(batch: dict[str, Any], num_generations: int) -> dict[str, torch.Tensor]:
    """The batch's prompts and images with every row repeated G times (the layout of a Rollout)."""
    g = num_generations
    per_image = batch["image_grid_thw"].prod(dim=-1).tolist()
    images = torch.split(batch["pixel_values"], per_image)
    return {
        **{key: batch[key].repeat_interleave(g, dim=0) for key in PROMPT_KEYS if key != "pixel_values"},
        "pixel_values": torch.cat([image for image in images for _ in range(g)]),
    }


def select_rows(prompts: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of repeated prompts, with exactly their images' patches."""
    per_image = prompts["image_grid_thw"].prod(dim=-1)
    offsets = torch.cat([per_image.new_zeros(1), per_image.cumsum(0)]).tolist()
    start, stop, _ = rows.indices(per_image.numel())
    return {
        **{k: v[rows] for k, v in prompts.items() if k != "pixel_values"},
        "pixel_values": prompts["pixel_values"][offsets[start] : offsets[stop]],
    }
