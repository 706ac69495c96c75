"""Qwen3-VL, dense and MoE: M-RoPE positions as Qwen2.5-VL (interleaved sections inside the model), 16-px patches,
DeepStack visual features added in the first decoder layers during the prompt's forward (kept in its cache)."""

from __future__ import annotations

from typing import ClassVar

from models.families.qwen2_5_vl import QwenVLFamily


class Qwen3VLFamily(QwenVLFamily):
    name: ClassVar[str] = "qwen3_vl"
    # The MoE variant shards per decoder layer like the dense one (experts stay inside their layer).
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_vl", "qwen3_vl_moe")


FAMILY = Qwen3VLFamily()
