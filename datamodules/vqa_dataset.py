"""One CT-RATE-VQA record → a zoom-embedded slice image → processor inputs and SFT target ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.transforms import Compose, Resized
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from common.checkpoint_types import allow_in_checkpoints
from datamodules.boxes import box_problem
from datamodules.collate import TOKEN_KEYS
from datamodules.ctrate import BadSampleError, VolumeCache, axial_slice
from datamodules.image_conditions import NEEDS_ZOOM, PIXEL_CONDITIONS, ImageCondition
from datamodules.processor import image_token_id
from datamodules.prompts import PromptFormat, build_messages, end_of_turn, system_prompt_for, target_text
from datamodules.record_views import RecordViews
from datamodules.slabs import axial_slab
from datamodules.slice_cache import SliceCache
from datamodules.transforms import HUWindowd, ZoomEmbedd, condition_steps, one_intra_op_thread, to_pil
from datamodules.views import view_labels, views_of

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
    """One VQA record → processor inputs for its zoom-embedded slice, plus the SFT target ids.

    Decoded volumes are kept in a small LRU cache because several questions share one volume. ``image_condition``
    (the visual-reliance audit) shows each question another image (datamodules/image_conditions.py).
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
        self.volumes = VolumeCache(root, volume_cache_size)
        self.slice_cache = SliceCache(slice_cache_dir, self.volumes) if slice_cache_dir else None
        self.skipped: dict[str, str] = {}  # record id -> problem; a dict so later epochs don't recount
        steps: list[Any] = [HUWindowd(keys="image", windows=list(windows))]
        mode = image_condition.name if image_condition is not None else "original"
        record_mode = mode not in ("original", *PIXEL_CONDITIONS)
        self.views = RecordViews(image_condition, records, self.volumes, metadata, root) if record_mode else None
        if zoom is not None:
            steps.append(
                ZoomEmbedd(
                    keys="image",
                    box_key="roi",
                    layout=zoom.layout,
                    margin=zoom.margin,
                    inset_fraction=zoom.inset_fraction,
                    out_key="zoomed" if mode in NEEDS_ZOOM else None,
                )
            )
        resize = Resized(keys="image", spatial_size=image_size, size_mode="longest", mode="bilinear")
        steps += condition_steps(image_condition, steps[-1] if zoom is not None else None, resize)
        self.transform = Compose(steps)
        self.end_of_turn = end_of_turn(processor.tokenizer)

    def __len__(self) -> int:
        return len(self.records)

    def images(self, record: dict[str, Any]) -> list[torch.Tensor]:
        """The (3, H, W) images in [0, 1] the model sees for this record, one per view (``datamodules/views.py``;
        a single-slice record has one). Raises BadSampleError naming the record's line and the bad field."""
        if self.views is not None:
            record = self.views.view(record)[0]
        many = bool(record.get("views"))
        out = []
        for i, view in enumerate(views_of(record)):
            hu = self.hu_view(record, view)
            height, width = hu.shape
            for box in view["roi"]:
                if (problem := box_problem(box, height, width)) is not None:
                    field = f"views[{i}].roi" if many else "roi"
                    raise BadSampleError(f"{record['_where']}: field '{field}' {problem} of {record['volume_name']}")
            out.append(self.render(hu, view["roi"]))
        return out

    def image(self, record: dict[str, Any]) -> torch.Tensor:
        """The record's images as one (3, H, K·W) picture, views side by side (what case reports save)."""
        return torch.cat(self.images(record), dim=-1)

    def hu_view(self, record: dict[str, Any], view: dict[str, Any]) -> np.ndarray:
        """One view's HU image: its slice (``hu_slice``), or the projection of its slab (``datamodules/slabs.py``)."""
        if not view["slab_mm"]:
            return self.hu_slice({**record, "slice_index": view["slice_index"]})
        volume = self.volumes.get(record["volume_name"], self.metadata.get(record["volume_name"]))
        z_spacing = float(volume.pixdim[2]) if hasattr(volume, "pixdim") else 1.0
        try:
            return axial_slab(volume, view["slice_index"], view["slab_mm"], z_spacing, view["projection"])
        except BadSampleError as e:
            raise BadSampleError(f"{record['_where']}: field 'views': {e} ({record['volume_name']})") from e

    def hu_slice(self, record: dict[str, Any]) -> np.ndarray:
        """The record's axial slice in HU: from the slice cache on disk when there is one, else cut from its
        (memory-cached) volume."""
        name = record["volume_name"]
        meta = self.metadata.get(name)
        if self.slice_cache is None:
            return self._cut(record, meta)
        return self.slice_cache.get(name, meta, record["slice_index"], lambda: self._cut(record, meta))

    def _cut(self, record: dict[str, Any], meta: dict[str, Any] | None) -> np.ndarray:
        volume = self.volumes.get(record["volume_name"], meta)
        depth = volume.shape[-1]
        if not 0 <= record["slice_index"] < depth:
            raise BadSampleError(
                f"{record['_where']}: field 'slice_index' {record['slice_index']} is outside the volume's "
                f"{depth} slices ({record['volume_name']})"
            )
        return axial_slice(volume, record["slice_index"])

    def render(self, slice_hu: np.ndarray, roi: list[list[int]]) -> torch.Tensor:
        """An axial HU slice and its ROI boxes → the windowed, zoom-embedded, resized (3, H, W) image in [0, 1]."""
        with one_intra_op_thread():
            data = self.transform({"image": torch.as_tensor(np.asarray(slice_hu, dtype=np.float32)), "roi": roi})
            # A plain tensor: Resized returns a MetaTensor, whose every later op (here, to_pil) pays for bookkeeping
            # of metadata that the 2D image does not use (a tenth of a sample's time; same values).
            return convert_to_tensor(data["image"], track_meta=False).float().clamp(0, 1)

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
        return self.encode(record, self.images(record))

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
            "image_tokens": int((prompt_ids == self.image_token_id).sum()),  # the per-batch image-token budget
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
