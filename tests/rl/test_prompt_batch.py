"""Prompt rows: repeated G times with their images, and sliced to micro-batches with exactly their images' patches."""

from __future__ import annotations

import torch

from rl.prompt_batch import prompt_keys, repeat_prompts, select_rows, with_completions


def three_prompts() -> dict[str, torch.Tensor]:
    """A collated batch's prompt keys: 3 prompts of 5 tokens, images of 4, 8 and 16 patches numbered 0…27."""
    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 4, 4]])
    ids = torch.arange(15).view(3, 5)
    return {
        "prompt_input_ids": ids,
        "prompt_attention_mask": torch.ones_like(ids),
        "prompt_mm_token_type_ids": torch.zeros_like(ids),
        "pixel_values": torch.arange(28, dtype=torch.float32).unsqueeze(1).expand(28, 6),
        "image_grid_thw": grid,
    }


def test_repeat_prompts_repeats_each_row_and_its_image_g_times():
    batch = three_prompts()
    prompts = repeat_prompts(batch, 2)
    assert list(prompts) == prompt_keys(batch) == [*batch]
    assert torch.equal(prompts["prompt_input_ids"], batch["prompt_input_ids"].repeat_interleave(2, dim=0))
    images = torch.split(batch["pixel_values"], [4, 8, 16])
    assert torch.equal(prompts["pixel_values"], torch.cat([images[i] for i in (0, 0, 1, 1, 2, 2)]))


def test_select_rows_takes_exactly_the_rows_images():
    batch = three_prompts()
    prompts = repeat_prompts(batch, 2)
    images = torch.split(batch["pixel_values"], [4, 8, 16])
    part = select_rows(prompts, slice(3, 5))  # second copy of prompt 1, first copy of prompt 2
    assert torch.equal(part["pixel_values"], torch.cat([images[1], images[2]]))
    assert torch.equal(part["prompt_input_ids"], prompts["prompt_input_ids"][3:5])
    assert torch.equal(part["image_grid_thw"], batch["image_grid_thw"][1:3])


def test_one_fixed_size_image_per_row_for_other_families():
    """Gemma 3 / LLaVA style: a (B, 3, H, W) image tensor and per-row image sizes, token types for Gemma."""
    ids = torch.arange(6).view(3, 2)
    batch = {
        "prompt_input_ids": ids,
        "prompt_attention_mask": torch.ones_like(ids),
        "prompt_token_type_ids": torch.tensor([[1, 0], [1, 0], [1, 0]]),
        "pixel_values": torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 4, 4),
        "image_sizes": torch.tensor([[4, 4], [4, 4], [4, 4]]),
    }
    part = select_rows(repeat_prompts(batch, 2), slice(1, 4))  # rows of prompts 0, 1, 1
    assert part["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0] and part["image_sizes"].shape == (3, 2)
    inputs = with_completions(part, torch.full((3, 2), 7), torch.ones(3, 2, dtype=torch.long))
    assert inputs["token_type_ids"].tolist() == [[1, 0, 0, 0]] * 3 and inputs["input_ids"].shape == (3, 4)
    assert "image_sizes" in inputs and "prompt_input_ids" not in inputs
