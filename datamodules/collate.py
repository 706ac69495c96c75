"""Batching CT-VQA samples: left padding for generation, answer-only labels for SFT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


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

    - ``input_ids``/``attention_mask``/``labels``/``mm_token_type_ids``: prompt + target, for the SFT loss;
      labels are IGNORE_INDEX everywhere but the target (the assistant's answer turn).
    - ``prompt_input_ids``/``prompt_attention_mask``/``prompt_mm_token_type_ids``: the prompt alone, for generation.
    Images (``pixel_values``, ``image_grid_thw``) are shared by both views.
    """

    pad_token_id: int

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        full, labels, mm_full = [], [], []
        for s in samples:
            full.append(torch.cat([s["prompt_ids"], s["target_ids"]]))
            labels.append(torch.cat([torch.full_like(s["prompt_ids"], IGNORE_INDEX), s["target_ids"]]))
            mm_full.append(torch.cat([s["mm_token_type_ids"], torch.zeros_like(s["target_ids"])]))
        input_ids = left_pad(full, self.pad_token_id)
        prompt_ids = left_pad([s["prompt_ids"] for s in samples], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": left_pad([torch.ones_like(r) for r in full], 0),
            "labels": left_pad(labels, IGNORE_INDEX),
            "mm_token_type_ids": left_pad(mm_full, 0),
            "prompt_input_ids": prompt_ids,
            "prompt_attention_mask": left_pad([torch.ones_like(s["prompt_ids"]) for s in samples], 0),
            "prompt_mm_token_type_ids": left_pad([s["mm_token_type_ids"] for s in samples], 0),
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples]),
            "meta": [s["meta"] for s in samples],
        }
