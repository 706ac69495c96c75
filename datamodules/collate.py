"""Batching CT-VQA samples: left padding for generation, answer-only labels for SFT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100
# Processor outputs that label each prompt token (image token or text; Gemma 3's bidirectional image attention):
# padded and extended with the prompt. Every other processor output but the ids and mask is image data.
TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")
# How many images each row's prompt holds, (B,): one per candidate view (datamodules/views.py). Not a model input.
IMAGE_COUNTS = "prompt_image_counts"
TEXT_KEYS = frozenset(
    {"input_ids", "attention_mask", "labels", "meta", "prompt_input_ids", "prompt_attention_mask", IMAGE_COUNTS}
    | {k for key in TOKEN_KEYS for k in (key, f"prompt_{key}")}
)
# What a collated sample holds besides its processor outputs.
SAMPLE_KEYS = frozenset({"prompt_ids", "target_ids", "meta", "num_images"})


def image_keys(batch: dict[str, Any]) -> list[str]:
    """The batch's image inputs (``pixel_values``, ``image_grid_thw``, ``image_sizes``, …), as the processor named
    them; ``prompt_image_counts`` says how many images each row has."""
    return [key for key in batch if key not in TEXT_KEYS]


def prompt_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Model keyword arguments for the batch's prompts alone: ids, mask, token types and images."""
    inputs = {
        key.removeprefix("prompt_"): value
        for key, value in batch.items()
        if key.startswith("prompt_") and key != IMAGE_COUNTS
    }
    return inputs | {key: batch[key] for key in image_keys(batch)}


def full_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Model keyword arguments for prompt + target (the SFT view): ids, mask, token types and images."""
    text = ("input_ids", "attention_mask", *TOKEN_KEYS)
    return {key: batch[key] for key in text if key in batch} | {key: batch[key] for key in image_keys(batch)}


def concat_images(samples: list[dict[str, Any]], key: str) -> torch.Tensor:
    """One image input of all samples, concatenated along its first dimension.

    Raises ValueError when the samples' images differ in shape where they must not (e.g. differently sized
    images for a family whose processor gives one fixed-size tensor per image)."""
    try:
        return torch.cat([s[key] for s in samples])
    except RuntimeError as e:
        shapes = sorted({tuple(s[key].shape) for s in samples})
        raise ValueError(f"image input {key!r} of one batch has shapes {shapes}: give all images one size") from e


def left_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """Stack 1-D tensors into (B, T), padding on the left so all rows end at the last column."""
    length = max(len(r) for r in rows)
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        if len(row):
            out[i, length - len(row) :] = row
    return out


@dataclass
class VQACollator:
    """Collate samples (``None`` = skipped bad sample) into one batch with two views of the same prompts.

    - ``input_ids``/``attention_mask``/``labels`` and the token types (``mm_token_type_ids`` for Qwen,
      ``token_type_ids`` for Gemma 3): prompt + target, for the SFT loss; labels are IGNORE_INDEX everywhere but
      the target (the assistant's answer turn).
    - ``prompt_input_ids``/``prompt_attention_mask``/``prompt_<token types>``: the prompt alone, for generation.
    Images (whatever else the processor returned: Qwen's ``pixel_values`` patches and ``image_grid_thw``, other
    families' ``pixel_values``, ``image_sizes``, …) are shared by both views, all rows' images concatenated;
    ``prompt_image_counts`` (B,) says how many are each row's (one per candidate view).
    """

    pad_token_id: int

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        full, labels = [], []
        for s in samples:
            full.append(torch.cat([s["prompt_ids"], s["target_ids"]]))
            labels.append(torch.cat([torch.full_like(s["prompt_ids"], IGNORE_INDEX), s["target_ids"]]))
        batch = {
            "input_ids": left_pad(full, self.pad_token_id),
            "attention_mask": left_pad([torch.ones_like(r) for r in full], 0),
            "labels": left_pad(labels, IGNORE_INDEX),
        }
        token_keys = [k for k in TOKEN_KEYS if k in samples[0]]
        for key in token_keys:
            batch[key] = left_pad([torch.cat([s[key], torch.zeros_like(s["target_ids"])]) for s in samples], 0)
        batch["prompt_input_ids"] = left_pad([s["prompt_ids"] for s in samples], self.pad_token_id)
        batch["prompt_attention_mask"] = left_pad([torch.ones_like(s["prompt_ids"]) for s in samples], 0)
        for key in token_keys:
            batch[f"prompt_{key}"] = left_pad([s[key] for s in samples], 0)
        batch[IMAGE_COUNTS] = torch.tensor([s.get("num_images", 1) for s in samples], dtype=torch.long)
        for key in (k for k in samples[0] if k not in SAMPLE_KEYS and k not in TOKEN_KEYS):
            batch[key] = concat_images(samples, key)
        batch["meta"] = [s["meta"] for s in samples]
        return batch
