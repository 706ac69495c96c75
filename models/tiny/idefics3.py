"""A tiny, randomly initialised Idefics3 model.

Mirrors ``HuggingFaceM4/Idefics3-8B-Llama3``: ``Idefics3ForConditionalGeneration`` (a SigLIP-style vision tower,
pixel-shuffle connector with ``scale_factor`` 2, a Llama 3 language model), the Llama 3 byte-level tokenizer
(``PreTrainedTokenizerFast``, ``<|begin_of_text|>`` added) with Idefics3's ``<fake_token_around_image>``, ``<image>``,
``<end_of_utterance>``, ``<global-img>`` and ``<row_i_col_j>`` tokens, its ``User:``/``Assistant:`` template and
``Idefics3Processor``, which writes an image as ``<fake_token_around_image><global-img>`` + ``image_seq_len`` ×
``<image>`` + ``<fake_token_around_image>`` (plus row/column tiles for images above one tile). Scaled down: one
112-pixel tile per edge, 16 tokens per tile.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)

from models.tiny.common import save_tiny, text_decoder, vision_encoder
from models.tiny.tokenizers import build_tokenizer

# Tokens the Idefics3 processors write around and between image tiles (row/column tags up to a 6×6 split).
IMAGE_SPLIT_TOKENS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
SPECIAL_TOKENS = (*LLAMA3_SPECIAL_TOKENS, *IMAGE_SPLIT_TOKENS)
IMAGE_TOKEN = "<image>"
END_OF_TURN = "<end_of_utterance>"

# Idefics3-8B-Llama3 chat template, verbatim.
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

TILE = 112
PATCH_SIZE = 14
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (TILE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 16


def build_processor() -> Idefics3Processor:
    # The real tokenizer's eos is Llama 3's <|end_of_text|>; turns end with <end_of_utterance>. Llama 3 has no pad
    # token of its own: <|end_of_text|> pads (an assumption, stated in tiny_config's generation settings too).
    tokenizer = build_tokenizer(
        PreTrainedTokenizerFast,
        SPECIAL_TOKENS,
        CHAT_TEMPLATE,
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        bos_token="<|begin_of_text|>",
        add_bos_token=True,
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": TILE},
        max_image_size={"longest_edge": TILE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE
    )


def tiny_config(processor: Idefics3Processor, hidden_size: int = 64) -> Idefics3Config:
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    text_config = text_decoder(
        tok,
        model_type="llama",
        bos="<|begin_of_text|>",
        eos=["<|end_of_text|>", "<|eot_id|>"],
        pad="<|end_of_text|>",
        rope=500_000.0,
        hidden_size=hidden_size,
    )
    vision_config = vision_encoder(TILE, PATCH_SIZE)
    return Idefics3Config(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids(IMAGE_TOKEN),
        scale_factor=SCALE_FACTOR,
        pad_token_id=ids("<|end_of_text|>"),
    )


def build(out: Path, seed: int = 0) -> Path:
    """Write the tiny Idefics3 model directory to ``out`` (atomically)."""
    processor = build_processor()
    config = tiny_config(processor)
    ids = processor.tokenizer.convert_tokens_to_ids
    # The real checkpoint ships no generation_config and stops only on Llama 3's ids; the end of a turn is
    # <end_of_utterance>, so it is a stop token here.
    eos_ids = [ids(END_OF_TURN), ids("<|end_of_text|>")]
    return save_tiny(Idefics3ForConditionalGeneration, config, processor, out, seed, eos_ids, ids("<|end_of_text|>"))
