"""A tiny, randomly initialised LLaVA-OneVision model.

Mirrors ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``: ``LlavaOnevisionForConditionalGeneration`` (SigLIP vision
tower, two-layer GELU projector, learned ``image_newline``, a Qwen2 language model) with its Qwen2 tokenizer plus
``<image>``/``<video>``, its ChatML template, and ``LlavaOnevisionProcessor`` (AnyRes tiling: a base view plus grid
crops, capped by ``vision_aspect_ratio``). Scaled down: 56-pixel crops on a grid of at most 2×2, capped at one crop's
worth of features (``anyres_max_1``, the real one is ``anyres_max_9`` of 384-pixel crops), so a 112×112 image is
16 base + 4×(4+1) tokens = 36.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Tokenizer,
)

from models.tiny.common import qwen2_decoder, save_tiny, vision_encoder
from models.tiny.tokenizers import build_tokenizer

# Qwen2-Instruct's special tokens, then the two LLaVA-OneVision adds.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
IMAGE_TOKEN = "<image>"
END_OF_TURN = "<|im_end|>"

# llava-onevision-qwen2-*-hf chat template, verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CROP = 56
PATCH_SIZE = 14
GRID_PINPOINTS = [[CROP * h, CROP * w] for h in (1, 2) for w in (1, 2)]
ASPECT_RATIO = "anyres_max_1"
SIGLIP_NORM = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def build_processor() -> LlavaOnevisionProcessor:
    tokenizer = build_tokenizer(
        Qwen2Tokenizer, SPECIAL_TOKENS, CHAT_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": CROP, "width": CROP}, image_grid_pinpoints=GRID_PINPOINTS, **SIGLIP_NORM
    )
    video_processor = LlavaOnevisionVideoProcessor(size={"height": CROP, "width": CROP}, **SIGLIP_NORM)
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=(CROP // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=ASPECT_RATIO,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(processor: LlavaOnevisionProcessor, hidden_size: int = 64) -> LlavaOnevisionConfig:
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    text_config = qwen2_decoder(tok, hidden_size)
    vision_config = vision_encoder(CROP, PATCH_SIZE, model_type="siglip_vision_model", vision_use_head=False)
    return LlavaOnevisionConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=ids(IMAGE_TOKEN),
        video_token_index=ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_aspect_ratio=ASPECT_RATIO,
        tie_word_embeddings=True,
    )


def build(out: Path, seed: int = 0) -> Path:
    """Write the tiny LLaVA-OneVision model directory to ``out`` (atomically)."""
    processor = build_processor()
    config = tiny_config(processor)
    text = config.text_config  # generation stops on the decoder's eos (<|im_end|>) and pads with its pad
    return save_tiny(
        LlavaOnevisionForConditionalGeneration, config, processor, out, seed, [text.eos_token_id], text.pad_token_id
    )
