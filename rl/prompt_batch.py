"""The prompts of a collated CT-VQA batch as rows: repeated G times (one row per completion), sliced to a
micro-batch with exactly their images, their rotary positions (the model family's), and the model inputs of
prompt + completion."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from datamodules.collate import IMAGE_COUNTS, TOKEN_KEYS, image_keys, prompt_inputs
from models.families import family_of


def prompt_keys(batch: dict[str, Any]) -> list[str]:
    """What a collated batch holds for its prompts: token ids, mask, token types, image counts and images."""
    return [key for key in batch if key.startswith("prompt_")] + image_keys(batch)


def prompt_positions(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary positions of the prompts, (R, B, T) for multimodal RoPE (R sections) or (B, T), and each prompt's
    next text position, (B,), as ``model``'s family builds them (``models/families``)."""
    return family_of(model).prompt_positions(model, batch)


def completion_positions(positions: torch.Tensor, next_position: torch.Tensor, length: int) -> torch.Tensor:
    """Positions of ``length`` completion tokens after prompts with ``positions``, (…, N, L)."""
    steps = torch.arange(length, device=next_position.device)
    return (next_position.unsqueeze(1) + steps).expand(*positions.shape[:-2], -1, -1)


def with_completions(
    prompts: dict[str, Any], completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> dict[str, Any]:
    """Model inputs of prompt + completion rows: ids, mask and token types (completion tokens are text) joined,
    images as they are. ``prompts`` holds one row per completion."""
    inputs = prompt_inputs(prompts)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], completion_ids], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], completion_mask], dim=1)
    for key in (k for k in TOKEN_KEYS if k in inputs):
        inputs[key] = torch.cat([inputs[key], torch.zeros_like(completion_ids)], dim=1)
    return inputs


def image_counts(batch: dict[str, Any]) -> list[int]:
    """How many images each row's prompt holds (``prompt_image_counts``; one each when a batch does not say)."""
    if IMAGE_COUNTS in batch:
        return batch[IMAGE_COUNTS].tolist()
    return [1] * batch["prompt_input_ids"].size(0)


def image_rows(batch: dict[str, Any], key: str) -> list[int]:
    """How many entries of image input ``key`` belong to each row: Qwen's ``pixel_values`` are patches, as many
    per image as its ``image_grid_thw`` says, summed over the row's images; any other image input has the same
    count per image (``image_grid_thw``: one; a family's tiles: several). Raises ValueError when the entries do not
    divide among the rows' images (image features and image tokens would not match)."""
    counts = image_counts(batch)
    size, images = batch[key].size(0), sum(counts)
    if key == "pixel_values" and "image_grid_thw" in batch:
        per_image = batch["image_grid_thw"].prod(dim=-1).tolist()
        if len(per_image) != images or sum(per_image) != size:
            raise ValueError(f"pixel_values has {size} patches and image_grid_thw {len(per_image)} images "
                             f"({sum(per_image)} patches) for {images} images of {len(counts)} prompts")  # fmt: skip
        offsets = [0, *itertools.accumulate(counts)]
        return [sum(per_image[offsets[i] : offsets[i + 1]]) for i in range(len(counts))]
    if images == 0 or size % images:
        raise ValueError(f"image input {key!r} has {size} entries for {images} images of {len(counts)} prompts")
    return [count * (size // images) for count in counts]


def repeat_prompts(batch: dict[str, Any], num_generations: int) -> dict[str, torch.Tensor]:
    """The batch's prompts and images with every row repeated G times (the layout of a Rollout)."""
    g = num_generations
    out = {key: batch[key].repeat_interleave(g, dim=0) for key in batch if key.startswith("prompt_")}
    for key in image_keys(batch):
        parts = torch.split(batch[key], image_rows(batch, key))
        out[key] = torch.cat([part for part in parts for _ in range(g)])
    return out


def select_rows(prompts: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of repeated prompts, with exactly their images."""
    out = {key: prompts[key][rows] for key in prompts if key.startswith("prompt_")}
    start, stop, _ = rows.indices(prompts["prompt_input_ids"].size(0))
    for key in image_keys(prompts):
        offsets = [0, *itertools.accumulate(image_rows(prompts, key))]
        out[key] = prompts[key][offsets[start] : offsets[stop]]
    return out
