"""What the tiny offline model builders share: the scaled-down decoder and vision-tower shapes, and the save step.

Each family file (models/tiny/*.py) keeps its own tokens, chat template, processor and config class; the shape of
a tiny text decoder (2 layers, 2 heads, 1 KV head, 64 wide by default), of a tiny vision tower (1 layer, 64 wide,
2 heads) and the way a model is seeded, given its generation settings and written are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from models.loading import save_model_dir


def text_decoder(
    tokenizer: PreTrainedTokenizerBase,
    *,
    bos: str,
    eos: str | Sequence[str],
    pad: str,
    rope: float | dict[str, Any],
    model_type: str | None = None,
    hidden_size: int = 64,
    intermediate_size: int | None = None,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    tie_word_embeddings: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A tiny text-decoder ``text_config`` over ``tokenizer``'s vocabulary.

    ``bos``/``eos``/``pad`` are tokens (``eos`` may be several, giving a list of ids); ``rope`` is a
    ``rope_theta`` for default RoPE or the whole ``rope_parameters``. ``intermediate_size`` defaults to twice
    ``hidden_size``; ``tie_word_embeddings`` is left out (the config class's default) when None; ``extra``
    adds (or overrides) the family's own keys (``head_dim``, ``layer_types``, …).
    """
    ids = tokenizer.convert_tokens_to_ids
    config: dict[str, Any] = {"model_type": model_type} if model_type else {}
    config |= {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2 if intermediate_size is None else intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": rope if isinstance(rope, dict) else {"rope_type": "default", "rope_theta": rope},
        "bos_token_id": ids(bos),
        "eos_token_id": ids(eos) if isinstance(eos, str) else [ids(token) for token in eos],
        "pad_token_id": ids(pad),
    }
    if tie_word_embeddings is not None:
        config["tie_word_embeddings"] = tie_word_embeddings
    return config | extra


def qwen2_decoder(tokenizer: PreTrainedTokenizerBase, hidden_size: int = 64) -> dict[str, Any]:
    """A tiny Qwen2 language model (ChatML tokens, tied embeddings): LLaVA-OneVision's and InternVL's."""
    return text_decoder(
        tokenizer,
        model_type="qwen2",
        bos="<|endoftext|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        rope=1_000_000.0,
        hidden_size=hidden_size,
        tie_word_embeddings=True,
    )


def vision_encoder(image_size: Any, patch_size: Any, **extra: Any) -> dict[str, Any]:
    """A tiny ViT ``vision_config``: 64 wide, MLP 128, one layer of two heads; ``extra`` adds family keys."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        **extra,
    }


def save_tiny(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    processor: ProcessorMixin,
    out: Path,
    seed: int,
    eos_ids: list[int],
    pad_id: int,
    bos_id: int | None = None,
) -> Path:
    """Initialise ``model_class(config)`` under ``seed``, set its generation ids, and write it with ``processor``.

    ``eos_ids`` are the ids generation stops on, ``pad_id`` pads, ``bos_id`` (when given) starts. The directory
    is written atomically (``save_model_dir``); returns ``out``.
    """
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.eos_token_id = list(eos_ids)
    model.generation_config.pad_token_id = pad_id
    if bos_id is not None:
        model.generation_config.bos_token_id = bos_id
    return save_model_dir(model, processor, Path(out))
