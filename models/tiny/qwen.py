"""Tiny, randomly initialised models of the Qwen training families, built offline like the embedded default.

Qwen2-VL (MedVLM-R1's base), Qwen3-VL (dense and MoE) and Qwen3.5 (hybrid: Gated-DeltaNet linear attention with
full attention every few layers) share Qwen's tokenizer, special tokens and chat template; they differ in
config, vision patch size (Qwen3-VL and Qwen3.5 use 16 px) and processor class. Each builder writes an ordinary
Hugging Face directory that ``AutoModelForImageTextToText`` and ``AutoProcessor`` load as a downloaded one.
The tiny Qwen2.5-VL is ``models/embedded.py`` (the embedded default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    PretrainedConfig,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from models.embedded import QWEN_VL_CHAT_TEMPLATE, build_tokenizer, tiny_config
from models.tiny.common import save_tiny, text_decoder

HIDDEN = 128
HEADS = 4


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _text(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    """The text decoder's shape: 128 wide, 4 layers, GQA 4:2, interleaved M-RoPE sections like the real 3:8:8."""
    head_dim = HIDDEN // HEADS
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    return text_decoder(
        tokenizer,
        bos="<|endoftext|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        rope={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 3,
        num_layers=4,
        num_heads=HEADS,
        num_kv_heads=2,
        tie_word_embeddings=True,
        head_dim=head_dim,
        **extra,
    )


def _vision(patch_size: int, **extra: Any) -> dict[str, Any]:
    return {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": HIDDEN,
        "patch_size": patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
        **extra,
    }


def qwen2_vl_config(tokenizer: Any) -> PretrainedConfig:
    """Qwen2-VL: no window attention in the vision tower, whose width is given as ``embed_dim``."""
    text = _text(tokenizer)
    vision = {"depth": 2, "embed_dim": 64, "hidden_size": HIDDEN, "mlp_ratio": 2, "num_heads": 2, "patch_size": 14}
    vision |= {"spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_special_ids(tokenizer))


def qwen2_5_vl_config(tokenizer: Any) -> PretrainedConfig:
    """Qwen2.5-VL: the embedded default's config."""
    return tiny_config(tokenizer)


def qwen3_vl_config(tokenizer: Any) -> PretrainedConfig:
    """Qwen3-VL (dense): 16-px patches, DeepStack features from vision block 0 into the first decoder layers."""
    vision = _vision(16, num_position_embeddings=64, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(
        text_config=_text(tokenizer), vision_config=vision, tie_word_embeddings=True, **_special_ids(tokenizer)
    )


def qwen3_vl_moe_config(tokenizer: Any) -> PretrainedConfig:
    """Qwen3-VL-MoE: every decoder MLP a mixture of 4 experts, 2 per token."""
    text = _text(tokenizer, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=HIDDEN, decoder_sparse_step=1)
    vision = _vision(16, num_position_embeddings=64, deepstack_visual_indexes=[0])
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_special_ids(tokenizer))


def qwen3_5_config(tokenizer: Any) -> PretrainedConfig:
    """Qwen3.5: three linear-attention (Gated DeltaNet) layers, then one full-attention layer, as the real 3:1."""
    text = _text(
        tokenizer,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_conv_kernel_dim=4,
    )
    text["rope_parameters"] |= {"partial_rotary_factor": 1.0}
    vision = _vision(16, num_position_embeddings=64)
    return Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=True, **_special_ids(tokenizer))


def qwen3_5_moe_config(tokenizer: Any) -> PretrainedConfig:
    """Qwen3.5-MoE: Qwen3.5's hybrid layers with every MLP a mixture of 4 experts (2 per token) and a shared one."""
    text = qwen3_5_config(tokenizer).text_config.to_dict()
    text |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": HIDDEN}
    text |= {"shared_expert_intermediate_size": HIDDEN}
    text = {k: v for k, v in text.items() if k not in ("model_type", "transformers_version", "architectures")}
    vision = _vision(16, num_position_embeddings=64)
    return Qwen3_5MoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_special_ids(tokenizer))


def _processor(tokenizer: Any, patch_size: int, qwen3: bool) -> Any:
    sizes = {"size": {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}, "merge_size": 2, "temporal_patch_size": 2}
    image = Qwen2VLImageProcessor(patch_size=patch_size, **sizes)
    if qwen3:
        video = Qwen3VLVideoProcessor(patch_size=patch_size, **sizes)
        return Qwen3VLProcessor(image, tokenizer, video, chat_template=QWEN_VL_CHAT_TEMPLATE)
    video = Qwen2VLVideoProcessor(patch_size=patch_size, **sizes)
    return Qwen2VLProcessor(image, tokenizer, video, chat_template=QWEN_VL_CHAT_TEMPLATE)


# family name → (config builder, model class, patch size, Qwen3 processor)
QWEN_FAMILIES = {
    "qwen2_vl": (qwen2_vl_config, Qwen2VLForConditionalGeneration, 14, False),
    "qwen3_vl": (qwen3_vl_config, Qwen3VLForConditionalGeneration, 16, True),
    "qwen3_vl_moe": (qwen3_vl_moe_config, Qwen3VLMoeForConditionalGeneration, 16, True),
    "qwen3_5": (qwen3_5_config, Qwen3_5ForConditionalGeneration, 16, True),
    "qwen3_5_moe": (qwen3_5_moe_config, Qwen3_5MoeForConditionalGeneration, 16, True),
}


def build(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny model of Qwen ``family`` (a key of ``QWEN_FAMILIES``) to ``out``, atomically."""
    make_config, model_class, patch_size, qwen3 = QWEN_FAMILIES[family]
    tokenizer = build_tokenizer()
    processor = _processor(tokenizer, patch_size, qwen3)
    config = make_config(tokenizer)
    text = config.text_config
    return save_tiny(model_class, config, processor, out, seed, [text.eos_token_id], text.pad_token_id)
