"""Loading the policy model and processor: the one path for the embedded default and real checkpoints."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, ProcessorMixin, Qwen2_5_VLForConditionalGeneration

from common.checkpoint_types import allow_in_checkpoints
from common.files import atomic_path

log = logging.getLogger(__name__)

# Language-model projections of every decoder layer; the vision tower's modules are excluded by LoRASpec.
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRASpec:
    """LoRA settings (peft). Applied to the language model only; the vision tower follows `freeze_vision`."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


# Saved in checkpoints' hyperparameters: allow it under torch.load(weights_only=True) when resuming.
# Checkpoints written before the renovation pickled it as lightning_modules.model_loading.LoRASpec.
allow_in_checkpoints(LoRASpec, old_module="lightning_modules.model_loading")


def load_model(
    model_path: str | Path,
    lora: LoRASpec | None = None,
    freeze_vision: bool = False,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """Load a Qwen2.5-VL model directory, optionally wrap it with LoRA and freeze the vision tower."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_path, dtype=dtype, attn_implementation=attn_implementation
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        names = "|".join(lora.target_modules)
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            # A regex (full match) so the vision tower's identically named projections stay untouched.
            target_modules=rf"^(?!.*visual).*\.({names})$",
        )
        model = get_peft_model(model, config)
    if freeze_vision:
        for name, param in model.named_parameters():
            if ".visual." in f".{name}":
                param.requires_grad_(False)
    return model


def unwrap_base(model: torch.nn.Module) -> PreTrainedModel:
    """The underlying transformers model, with any LoRA merged, ready for ``save_pretrained``."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def save_model_dir(model: PreTrainedModel, processor: ProcessorMixin, out_dir: str | Path) -> Path:
    """Save model + processor as a Hugging Face model directory, atomically.

    Written to a temporary sibling folder and renamed into place, so a crash never leaves a half-written
    model directory that a later run would load.
    """
    with atomic_path(out_dir, folder=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out_dir)
