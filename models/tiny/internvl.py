"""A tiny, randomly initialised InternVL (the transformers-native ``InternVLForConditionalGeneration``).

Mirrors ``OpenGVLab/InternVL3-1B-hf``: an InternViT vision tower, pixel-shuffle downsampling (ratio 0.5) and an MLP
projector into a Qwen2 language model; the Qwen2.5-VL tokenizer with InternVL's ``<img>``, ``</img>``,
``<IMG_CONTEXT>`` (plus ``<video>`` and the grounding tags), the converted checkpoints' ChatML template, and
``InternVLProcessor`` with ``GotOcr2ImageProcessor``, which expands ``<IMG_CONTEXT>`` into
``<img>`` + ``image_seq_length`` × ``<IMG_CONTEXT>`` + ``</img>``. Scaled down: 112-pixel tiles, 16 tokens per tile.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    Qwen2Tokenizer,
)

from models.embedded import QWEN_SPECIAL_TOKENS
from models.tiny.common import qwen2_decoder, save_tiny, vision_encoder
from models.tiny.tokenizers import build_tokenizer

# The Qwen2.5-VL tokenizer's special tokens, then those InternVL's converter adds.
SPECIAL_TOKENS = (
    *QWEN_SPECIAL_TOKENS,
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<video>",
)
IMAGE_TOKEN = "<IMG_CONTEXT>"
END_OF_TURN = "<|im_end|>"

# InternVL *-hf chat template (convert_internvl_weights_to_hf.py), verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)

TILE = 112
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5
IMAGE_SEQ_LENGTH = int((TILE // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)  # 16
IMAGENET_NORM = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def build_processor() -> InternVLProcessor:
    tokenizer = build_tokenizer(
        Qwen2Tokenizer,
        SPECIAL_TOKENS,
        CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": IMAGE_TOKEN,
            "video_token": "<video>",
        },
        return_token_type_ids=False,
    )
    image_processor = GotOcr2ImageProcessor(size={"height": TILE, "width": TILE}, **IMAGENET_NORM)
    video_processor = InternVLVideoProcessor(size={"height": TILE, "width": TILE}, **IMAGENET_NORM)
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=IMAGE_SEQ_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(processor: InternVLProcessor, hidden_size: int = 64) -> InternVLConfig:
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    text_config = qwen2_decoder(tok, hidden_size)
    vision_config = vision_encoder([TILE, TILE], [PATCH_SIZE, PATCH_SIZE], attention_bias=True)
    return InternVLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids(IMAGE_TOKEN),
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE_RATIO,
        tie_word_embeddings=True,
    )


def build(out: Path, seed: int = 0) -> Path:
    """Write the tiny InternVL model directory to ``out`` (atomically)."""
    processor = build_processor()
    config = tiny_config(processor)
    text = config.text_config  # generation stops on the decoder's eos (<|im_end|>) and pads with its pad
    return save_tiny(
        InternVLForConditionalGeneration, config, processor, out, seed, [text.eos_token_id], text.pad_token_id
    )
