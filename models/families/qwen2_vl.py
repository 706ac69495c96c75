"""Qwen2-VL (MedVLM-R1's base): Qwen2.5-VL's positions and layout, without window attention in the vision tower."""

from __future__ import annotations

from typing import ClassVar

from models.families.qwen2_5_vl import QwenVLFamily


class Qwen2VLFamily(QwenVLFamily):
    name: ClassVar[str] = "qwen2_vl"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl",)


FAMILY = Qwen2VLFamily()
