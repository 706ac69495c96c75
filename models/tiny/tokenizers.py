"""Tiny BPE tokenizers carrying a real family's special tokens, chat template and tokenizer class.

The vocabulary is trained on the project's own words (``_CORPUS_WORDS`` of models/embedded.py), like the embedded
Qwen2.5-VL: byte-level BPE for the GPT-2/Qwen/Llama-3 style families, SentencePiece-style BPE (``▁`` for spaces,
byte fallback) for Gemma. The tokenizer class then lays its own pipeline over that vocabulary, so the saved
``tokenizer.json`` and ``tokenizer_config.json`` are those of the real checkpoint's class.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase

from models.embedded import _CORPUS_WORDS, REASONING_TAGS, _train_bpe


def _sentencepiece_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A Gemma-style vocabulary: words carry a leading ``▁``; ``<0x00>``…``<0xFF>`` give byte fallback."""
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    corpus = [line.strip() for line in _CORPUS_WORDS.splitlines() if line.strip()]
    corpus += [line.lower() for line in corpus] + [line.title() for line in corpus]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    state = json.loads(tok.model.__getstate__())
    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    for token in sorted(state["vocab"], key=state["vocab"].get):
        vocab.setdefault(token, len(vocab))
    return vocab, [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]


def _byte_level_bpe(vocab_size: int) -> Tokenizer:
    tok = _train_bpe(vocab_size)
    tok.decoder = decoders.ByteLevel()
    return tok


def build_tokenizer(
    tokenizer_class: type[PreTrainedTokenizerBase],
    special_tokens: Sequence[str],
    chat_template: str,
    *,
    eos_token: str,
    pad_token: str,
    bos_token: str | None = None,
    unk_token: str | None = None,
    named_tokens: Mapping[str, str] | None = None,
    sentencepiece: bool = False,
    vocab_size: int = 1024,
    **class_kwargs: object,
) -> PreTrainedTokenizerBase:
    """A tokenizer of ``tokenizer_class`` over a tiny trained vocabulary.

    ``special_tokens`` are added in order (the named bos/eos/pad/unk first); ``named_tokens`` become attributes the
    family's processor reads (``tokenizer.image_token``, ``tokenizer.boi_token``…); the reasoning tags are ordinary
    added tokens, so they survive ``skip_special_tokens=True`` like in models/embedded.py.
    """
    named = {"eos_token": eos_token, "pad_token": pad_token, "bos_token": bos_token, "unk_token": unk_token}
    kwargs = {k: v for k, v in named.items() if v is not None} | dict(class_kwargs)
    if named_tokens:
        kwargs["extra_special_tokens"] = dict(named_tokens)
    if "vocab" in inspect.signature(tokenizer_class.__init__).parameters:
        if sentencepiece:
            vocab, merges = _sentencepiece_bpe(vocab_size)
        else:
            state = json.loads(_byte_level_bpe(vocab_size).model.__getstate__())
            vocab = state["vocab"]
            merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
        tokenizer = tokenizer_class(vocab=vocab, merges=merges, **kwargs)
    else:  # a plain tokenizers-backed class (Llama 3's PreTrainedTokenizerFast): it takes the whole pipeline
        tokenizer = tokenizer_class(tokenizer_object=_byte_level_bpe(vocab_size), **kwargs)
    new = [t for t in special_tokens if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    tokenizer.add_tokens(list(REASONING_TAGS))
    tokenizer.chat_template = chat_template
    return tokenizer
