"""A tiny, randomly initialised Gemma 3 vision-language model (the family of MedGemma).

Mirrors ``google/medgemma-4b-it`` (= ``google/gemma-3-4b-it``'s layout): ``Gemma3ForConditionalGeneration`` with a
SigLIP vision tower, an average-pooling projector down to ``mm_tokens_per_image`` soft tokens, a Gemma
SentencePiece-style tokenizer (``<bos>`` added, ``<start_of_turn>``/``<end_of_turn>`` turns, the ``model`` role) and
``Gemma3Processor``, which expands ``<start_of_image>`` into ``\\n\\n<start_of_image>`` + soft tokens +
``<end_of_image>\\n\\n``. Scaled down so a 112×112 image becomes 16 soft tokens.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    GemmaTokenizer,
)

from models.tiny.common import save_tiny, text_decoder, vision_encoder
from models.tiny.tokenizers import build_tokenizer

# The Gemma 3 tokenizer's own special tokens (named ones first), as in the -it checkpoints.
SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "[multimodal]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
IMAGE_TOKEN = "<start_of_image>"  # what the chat template writes; the processor expands it
END_OF_TURN = "<end_of_turn>"

# gemma-3-*-it / medgemma-*-it chat template, verbatim.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

IMAGE_SIZE = 112
PATCH_SIZE = 14
MM_TOKENS_PER_IMAGE = 16  # (112 / 14)² patches, average-pooled 2×2


def build_processor() -> Gemma3Processor:
    tokenizer = build_tokenizer(
        GemmaTokenizer,
        SPECIAL_TOKENS,
        CHAT_TEMPLATE,
        eos_token="<eos>",
        pad_token="<pad>",
        bos_token="<bos>",
        unk_token="<unk>",
        mask_token="<mask>",
        named_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
        sentencepiece=True,
        add_bos_token=True,
    )
    image_processor = Gemma3ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        resample=2,  # bilinear, as the real preprocessor_config
        do_pan_and_scan=False,
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )


def tiny_config(processor: Gemma3Processor, hidden_size: int = 64) -> Gemma3Config:
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    text_config = text_decoder(
        tok,
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        hidden_size=hidden_size,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=512,
        # Gemma 3 interleaves local (sliding) and global layers; keep one of each.
        layer_types=["sliding_attention", "full_attention"],
        rope={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        },
    )
    vision_config = vision_encoder(IMAGE_SIZE, PATCH_SIZE, vision_use_head=False)
    return Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )


def build(out: Path, seed: int = 0) -> Path:
    """Write the tiny Gemma 3 model directory to ``out`` (atomically)."""
    processor = build_processor()
    config = tiny_config(processor)
    ids = processor.tokenizer.convert_tokens_to_ids
    # The -it checkpoints stop on <eos> or <end_of_turn>.
    eos_ids = [ids("<eos>"), ids(END_OF_TURN)]
    return save_tiny(Gemma3ForConditionalGeneration, config, processor, out, seed, eos_ids, ids("<pad>"), ids("<bos>"))
