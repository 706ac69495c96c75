"""Loading a model directory: the one path for the embedded default, real checkpoints and every VLM family."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin

from common.checkpoint_types import allow_in_checkpoints
from common.files import atomic_path
from common.model_dirs import ModelLoadError, remote_code_check
from models.families import family_of, training_families

log = logging.getLogger(__name__)


@dataclass
class LoRASpec:
    """LoRA settings (peft). Applied to the language model only; the vision tower follows `freeze_vision`.
    ``target_modules``: module names to wrap; null = the model family's (``models/families``)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None


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
    trust_remote_code: bool = False,
    for_training: bool = False,
) -> PreTrainedModel:
    """Load a model directory with ``AutoModelForImageTextToText`` (its own family's class), optionally wrap it
    with LoRA and freeze the vision tower.

    Raises ModelLoadError when a weight of the class is missing from the directory or a weight in the directory
    has no place in the class (the model would be partly random), when its code is not trusted
    (``remote_code_check``), or, with ``for_training``, when its family is not one SFT and GRPO support.
    """
    remote_code_check(model_path, trust_remote_code)
    if for_training:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        if not family_of(config).trainable:
            raise ModelLoadError(
                f"{model_path}: model type {config.model_type!r} can be evaluated but not trained here; "
                f"SFT and GRPO support {', '.join(training_families())} (models/families)"
            )
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            model_path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported with the missing and unexpected keys below, then refused
        )
    except ValueError as error:  # e.g. "Unrecognized configuration class …": not an image-text-to-text model
        first = str(error).strip().splitlines()[0]
        raise ModelLoadError(f"{model_path}: AutoModelForImageTextToText cannot load it: {first}") from error
    kinds = ("missing_keys", "unexpected_keys", "mismatched_keys")  # mismatched: (name, saved shape, class shape)
    bad = {kind: sorted(k[0] if isinstance(k, tuple) else k for k in info.get(kind) or ()) for kind in kinds}
    if any(bad.values()):
        found = "; ".join(
            f"{len(keys)} {kind.replace('_', ' ')} (e.g. {', '.join(map(str, keys[:3]))})"
            for kind, keys in bad.items()
            if keys
        )
        raise ModelLoadError(
            f"{model_path}: its weights do not fit {type(model).__name__} (model_type {model.config.model_type!r} in "
            f"its config.json): {found}. Is the directory complete, and its config.json the one its weights were "
            "saved with?"
        )
    family = family_of(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=family.lora_regex(lora.target_modules),
        )
        model = get_peft_model(model, config)
    if freeze_vision:
        for name, param in model.named_parameters():
            if family.is_vision(name):
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
