"""VLM families: one adapter per family (``models/families/<family>.py``), looked up by ``config.model_type``.

Adding a family: write its adapter (a ``VLMFamily`` subclass and ``FAMILY = …``), add it to ``_ADAPTERS`` below,
and a tiny offline builder under ``models/tiny/`` for its tests. Any other model that ``AutoModelForImageTextToText``
loads gets the base ``VLMFamily`` (1-D positions): it can be evaluated, not trained.
"""

from __future__ import annotations

from typing import Any

from models.families import qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl
from models.families.base import VLMFamily

_ADAPTERS: tuple[VLMFamily, ...] = (qwen2_vl.FAMILY, qwen2_5_vl.FAMILY, qwen3_vl.FAMILY, qwen3_5.FAMILY)
FAMILIES: dict[str, VLMFamily] = {t: family for family in _ADAPTERS for t in family.model_types}
GENERIC = VLMFamily()


def training_families() -> list[str]:
    """``config.model_type`` values SFT and GRPO accept."""
    return sorted(t for t, family in FAMILIES.items() if family.trainable)


def family_of(model_or_config: Any) -> VLMFamily:
    """The adapter for a model (any LoRA/FSDP wrapping) or its config, by ``model_type``; else the generic one."""
    config = getattr(model_or_config, "config", model_or_config)
    return FAMILIES.get(getattr(config, "model_type", None), GENERIC)
