"""The embedded default: a tiny, randomly initialised model of the real Qwen2.5-VL architecture.

It is written to an ordinary Hugging Face model directory (config, safetensors, tokenizer, image
processor, chat template), so everything downstream loads it with the same ``from_pretrained(path)``
calls that load a real ``Qwen2.5-VL-3B-Instruct`` directory. Nothing is downloaded.

    python -m models.embedded --out artifacts/tiny-qwen2.5-vl
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from datamodules.ctrate import CTRATE_LABELS
from models.loading import save_model_dir

log = logging.getLogger(__name__)

# Qwen2.5-VL's own special tokens, in its order, so prompts render exactly as for the real model.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Reasoning tags are ordinary (non-special) added tokens: they survive skip_special_tokens=True decoding,
# which the answer parser relies on.
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# Qwen2's pre-tokenizer split pattern (GPT-4 style), so words split as in the real tokenizer.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2-VL / Qwen2.5-VL chat template (as shipped with the Instruct checkpoints).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Vocabulary seed for the tiny BPE: the words our prompts, reports and answers are made of. Byte-level
# BPE still encodes any other text (a real report, a user's question), just in more tokens.
_CORPUS_WORDS = """
You are a radiologist reading a chest CT slice. The image shows the global axial view; an inset shows the
zoomed region of interest outlined in yellow. Think step by step about where and what, then answer.
Answer with the option text only. Options: yes no right left lung lobe upper middle lower lobes both
Is there a in this CT slice image? Which abnormality is present? In which lung is the located? What is the
size of the How many nodules are visible? small medium large mm cm 1 2 3 or more none
The global view shows the thorax at the level of the heart lungs aorta spine mediastinum pleura pleural space.
The zoomed region shows a nodule calcification opacity consolidation effusion fluid dense bright dark
round irregular well-defined focal diffuse patchy posterior anterior dependent region wall coronary artery
heart is enlarged normal size no abnormality is seen the region looks normal clear lungs
Findings Impression Technique Clinical information non-contrast axial images were obtained
""" + " ".join(CTRATE_LABELS)


def _train_bpe(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    corpus = [line.strip() for line in _CORPUS_WORDS.splitlines() if line.strip()]
    # Lower- and title-case copies so sentence starts merge too.
    corpus += [line.lower() for line in corpus] + [line.title() for line in corpus]
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def build_tokenizer(vocab_size: int = 1024) -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer with Qwen2.5-VL's special tokens and chat conventions."""
    bpe = _train_bpe(vocab_size)
    model_state = json.loads(bpe.model.__getstate__())
    tokenizer = Qwen2Tokenizer(
        vocab=model_state["vocab"],
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_state["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.add_tokens(list(REASONING_TAGS))
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def build_processor(
    tokenizer: Qwen2Tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 448 * 448
) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL's processor; pixel bounds keep CPU images small (real checkpoints set their own)."""
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def tiny_config(tokenizer: Qwen2Tokenizer, hidden_size: int = 128, num_layers: int = 4) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of the real shape, scaled down (a few million parameters)."""
    ids = tokenizer.convert_tokens_to_ids
    num_heads = 4
    head_dim = hidden_size // num_heads
    # M-RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections like the real 3/8,3/8 split.
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 3,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        "tie_word_embeddings": True,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "in_channels": 3,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def build_embedded_model(out: Path, seed: int = 0, hidden_size: int = 128, num_layers: int = 4) -> Path:
    """Write the tiny Qwen2.5-VL model directory to ``out`` (atomically: a temp dir, then a rename)."""
    out = Path(out)
    processor = build_processor(build_tokenizer())
    config = tiny_config(processor.tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return save_model_dir(model, processor, out)


def ensure_model_dir(model_path: str | Path, build_embedded_if_missing: bool) -> Path:
    """Return ``model_path``; build the embedded tiny model there first if it is missing and allowed."""
    path = Path(model_path)
    if (path / "config.json").is_file():
        return path
    if not build_embedded_if_missing:
        raise FileNotFoundError(
            f"model directory {path} has no config.json. Point `model_path` at a Hugging Face model directory "
            "(e.g. a downloaded Qwen2.5-VL-3B-Instruct) or set `build_embedded_if_missing: true`."
        )
    log.info("building the embedded tiny Qwen2.5-VL at %s", path)
    return build_embedded_model(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/tiny-qwen2.5-vl"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    args = parser.parse_args(argv)
    path = build_embedded_model(args.out, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers)
    print(f"wrote tiny Qwen2.5-VL to {path}")


if __name__ == "__main__":
    main()
