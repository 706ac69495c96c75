"""One CT-RATE-VQA record → its zoom-embedded image(s) (one per candidate view) → processor inputs and SFT target
ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from common.checkpoint_types import allow_in_checkpoints
from datamodules.collate import TOKEN_KEYS
from datamodules.ctrate import BadSampleError
from datamodules.image_conditions import ImageCondition
from datamodules.processor import image_token_id
from datamodules.prompts import PromptFormat, build_messages, end_of_turn, system_prompt_for, target_text
from datamodules.record_images import RecordImages
from datamodules.transforms import one_intra_op_thread, to_pil
from datamodules.views import view_labels

log = logging.getLogger(__name__)


@dataclass
class ZoomSpec:
    """Zoom-in embedding settings (see datamodules/zoom.py:ZoomEmbed)."""

    layout: Literal["inset", "side_by_side"] = "inset"
    margin: float = 0.5
    inset_fraction: float = 0.5


# Saved in the data module's hyperparameters; checkpoints before the renovation name it datamodules.ct_vqa.
allow_in_checkpoints(ZoomSpec, old_module="datamodules.ct_vqa")


class CTVQADataset(Dataset):
    """One VQA record → processor inputs for its zoom-embedded image(s), plus the SFT target ids. ``renderer``
    (``datamodules/record_images.py``) makes the images: volumes, slice cache and the audit's image conditions.
    """

    def __init__(
        self,
        records: list[dict[str, Any]],
        root: Path,
        processor: Any,
        metadata: dict[str, dict[str, Any]],
        windows: Sequence[str],
        zoom: ZoomSpec | None,
        image_size: int,
        prompt_format: PromptFormat,
        system_prompt: str | None,
        max_length: int,
        skip_bad_samples: bool,
        volume_cache_size: int,
        keep_images: bool = False,
        slice_cache_dir: str | Path | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        image_condition: ImageCondition | None = None,
    ) -> None:
        self.records = records
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.keep_images = keep_images
        self.processor = processor
        self.metadata = metadata
        self.prompt_format = prompt_format
        layout = zoom.layout if zoom else "none"
        self.system_prompt = system_prompt or system_prompt_for(prompt_format, layout)
        self.views_system_prompt = system_prompt or system_prompt_for(prompt_format, layout, views=True)
        self.image_token_id = image_token_id(processor)
        self.max_length = max_length
        self.skip_bad_samples = skip_bad_samples
        self.skipped: dict[str, str] = {}  # record id -> problem; a dict so later epochs don't recount
        self.renderer = RecordImages(records, root, metadata, windows, zoom, image_size, volume_cache_size,
                                     slice_cache_dir, image_condition)  # fmt: skip
        self.end_of_turn = end_of_turn(processor.tokenizer)

    def __len__(self) -> int:
        return len(self.records)

    def images(self, record: dict[str, Any]) -> list[torch.Tensor]:
        """The (3, H, W) images in [0, 1] the model sees for this record, one per view (``RecordImages.images``)."""
        return self.renderer.images(record)

    def image(self, record: dict[str, Any]) -> torch.Tensor:
        """The record's images as one (3, H, K·W) picture, views side by side (what case reports save)."""
        return torch.cat(self.images(record), dim=-1)

    def render(self, slice_hu: np.ndarray, roi: list[list[int]]) -> torch.Tensor:
        """An axial HU image and its ROI boxes → the (3, H, W) image in [0, 1] (``RecordImages.render``)."""
        return self.renderer.render(slice_hu, roi)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        # Indices past the end are padding from EvenEvalSampler: a repeat, flagged so metrics skip it.
        record = self.records[index % len(self.records)]
        try:
            sample = self._encode(record)
            sample["meta"]["padding"] = index >= len(self.records)
            return sample
        except BadSampleError as e:
            if not self.skip_bad_samples:
                raise
            if record["id"] not in self.skipped:
                log.warning("skipping bad sample: %s", e)
            self.skipped[record["id"]] = str(e)
            return None

    def _encode(self, record: dict[str, Any]) -> dict[str, Any]:
        # The prompt labels the views actually shown (the audit's shuffled condition shows another record's).
        shown = self.renderer.shown(record).get("views")
        prompt_record = {**{k: v for k, v in record.items() if k != "views"}, **({"views": shown} if shown else {})}
        return self.encode(prompt_record, self.images(record))

    def encode(self, record: dict[str, Any], images: torch.Tensor | list[torch.Tensor]) -> dict[str, Any]:
        """Processor inputs for a record's question and the image(s) shown with it (one per view, each after its
        ``View k`` label), plus the SFT target ids. Raises BadSampleError when prompt or prompt + target would
        exceed ``max_length`` (never truncated: that would cut image tokens or the answer)."""
        images = [images] if isinstance(images, torch.Tensor) else list(images)
        labels = view_labels(record)
        system = self.system_prompt if labels is None else self.views_system_prompt
        messages = build_messages(record["question"], record["options"], system, labels)
        prompt = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        pils = [to_pil(image) for image in images]
        with one_intra_op_thread():
            enc = self.processor(text=[prompt], images=pils, return_tensors="pt")
        target = target_text(record["reasoning"], record["answer"], self.prompt_format) + self.end_of_turn
        target_ids = self.processor.tokenizer(target, add_special_tokens=False)["input_ids"]
        prompt_ids = enc["input_ids"][0]
        # Cutting the prompt would cut through image tokens or the question, and cutting the target would teach an
        # answer without its </think>, <answer> or end of turn: refuse either instead.
        if len(prompt_ids) >= self.max_length:
            raise BadSampleError(
                f"{record['_where']}: prompt is {len(prompt_ids)} tokens, over max_length={self.max_length}"
            )
        if len(prompt_ids) + len(target_ids) > self.max_length:
            raise BadSampleError(
                f"{record['_where']}: prompt + target is {len(prompt_ids) + len(target_ids)} tokens, "
                f"over max_length={self.max_length}"
            )
        meta = {
            **{k: record[k] for k in ("id", "question_type", "question", "answer", "options", "volume_name")},
            "abnormality": record.get("abnormality"),  # the label a presence question asks about
            "reasoning": record["reasoning"],  # reference reasoning, for BLEU / ROUGE-L at test time
            "prompt_format": self.prompt_format,  # rewards check the completion against the format asked for
            "views": record.get("views"),  # the evidence reward reads which views show the lesion
            # The per-batch image-token budget (None: a processor that names no image token).
            "image_tokens": None if self.image_token_id is None else int((prompt_ids == self.image_token_id).sum()),
        }
        if self.keep_images:
            meta["image"] = pils[0] if len(pils) == 1 else pils
        # Token types (row 0 of a batch of 1) and image inputs, as the processor names them (datamodules/collate.py).
        inputs = {k: v[0] if k in TOKEN_KEYS else v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        return {
            "prompt_ids": prompt_ids,
            "num_images": len(pils),
            **inputs,
            "target_ids": torch.tensor(target_ids, dtype=torch.long),
            "meta": meta,
        }
