"""A tiny, randomly initialised SmolVLM (SmolVLM2: ``model_type`` ``smolvlm``).

Mirrors ``HuggingFaceTB/SmolVLM2-256M-Video-Instruct``: ``SmolVLMForConditionalGeneration`` (Idefics3's layout: a
SigLIP-style vision tower, pixel-shuffle connector, a SmolLM2 language model) with the SmolLM2 byte-level
``GPT2Tokenizer`` (``<|im_start|>`` as bos, ``<end_of_utterance>`` as eos, ``<|im_end|>`` as pad) plus the image
tokens, its ``<|im_start|>User:``/``Assistant:`` template, and ``SmolVLMProcessor`` with ``SmolVLMImageProcessor``
(the same tile writing as Idefics3). Scaled down: one 112-pixel tile per edge, 16 tokens per tile. (SmolVLM v1
checkpoints are ``model_type`` ``idefics3``: see models/tiny/idefics3.py.)
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    GPT2Tokenizer,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from models.tiny.common import save_tiny, text_decoder, vision_encoder
from models.tiny.idefics3 import IMAGE_SPLIT_TOKENS
from models.tiny.tokenizers import build_tokenizer

# SmolLM2's special tokens, then SmolVLM's image tokens.
SMOLLM2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SPECIAL_TOKENS = (*SMOLLM2_SPECIAL_TOKENS, *IMAGE_SPLIT_TOKENS, "<video>")
IMAGE_TOKEN = "<image>"
END_OF_TURN = "<end_of_utterance>"

# SmolVLM2 chat template, verbatim (transformers' DEFAULT_CHAT_TEMPLATE for SmolVLM, as on the hub).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

TILE = 112
PATCH_SIZE = 14
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (TILE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 16
SIGLIP_NORM = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def build_processor() -> SmolVLMProcessor:
    tokenizer = build_tokenizer(
        GPT2Tokenizer,
        SPECIAL_TOKENS,
        CHAT_TEMPLATE,
        eos_token=END_OF_TURN,
        pad_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
        named_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": IMAGE_TOKEN,
            "end_of_utterance_token": END_OF_TURN,
            "global_image_token": "<global-img>",
        },
    )
    image_processor = SmolVLMImageProcessor(
        size={"longest_edge": TILE}, max_image_size={"longest_edge": TILE}, **SIGLIP_NORM
    )
    video_processor = SmolVLMVideoProcessor(
        size={"longest_edge": TILE}, max_image_size={"longest_edge": TILE}, **SIGLIP_NORM
    )
    return SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(processor: SmolVLMProcessor, hidden_size: int = 64) -> SmolVLMConfig:
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    text_config = text_decoder(
        tok,
        model_type="llama",
        bos="<|im_start|>",
        eos=END_OF_TURN,
        pad="<|im_end|>",
        rope=100_000.0,
        hidden_size=hidden_size,
        tie_word_embeddings=True,
    )
    vision_config = vision_encoder(TILE, PATCH_SIZE)
    return SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids(IMAGE_TOKEN),
        scale_factor=SCALE_FACTOR,
        pad_token_id=ids("<|im_end|>"),
        tie_word_embeddings=True,
    )


def build(out: Path, seed: int = 0) -> Path:
    """Write the tiny SmolVLM model directory to ``out`` (atomically)."""
    processor = build_processor()
    config = tiny_config(processor)
    ids = processor.tokenizer.convert_tokens_to_ids
    eos_ids, pad_id, bos_id = [ids(END_OF_TURN)], ids("<|im_end|>"), ids("<|im_start|>")
    return save_tiny(SmolVLMForConditionalGeneration, config, processor, out, seed, eos_ids, pad_id, bos_id)
