"""The model's processor, owned by the data side: it renders prompts and images into model inputs."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoProcessor, ProcessorMixin

from common.model_dirs import remote_code_check


def load_processor(model_path: str | Path, trust_remote_code: bool = False) -> ProcessorMixin:
    """The model directory's processor (tokenizer, image processor, chat template); ``trust_remote_code`` runs
    processor code the directory ships; without it such a directory is refused (ModelLoadError)."""
    remote_code_check(model_path, trust_remote_code)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    # Generation batches are left-padded so every prompt ends where its completion starts.
    processor.tokenizer.padding_side = "left"
    return processor


def image_token_id(processor: ProcessorMixin) -> int | None:
    """The id of the token each image's features replace in the prompt (Qwen's ``<|image_pad|>``, Gemma's
    ``<image_soft_token>``, …), as the processor names it; None when it names none."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and isinstance(getattr(processor, "image_token", None), str):
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return None if token_id is None else int(token_id)
