"""Extracting and normalising answers from generated text; shared by validation, evaluation and rewards."""

from __future__ import annotations

import re
from collections.abc import Sequence

_OPEN_RE = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE_RE = re.compile(r"</answer>", re.IGNORECASE)
_TAG_RE = re.compile(r"</?\s*(?:think|answer)\s*>", re.IGNORECASE)
# Hyphen, non-breaking hyphen, figure dash, en dash, em dash, minus: options are written with "–", models type "-".
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212", "-"))
_YES = {"yes", "y", "true", "present", "positive"}
_NO = {"no", "n", "false", "absent", "negative", "none"}


def extract_answer(text: str) -> str | None:
    """The text inside the last ``<answer>…</answer>``; None when there is none.

    The last one, because a model that revises itself writes the final answer last. Tags match in any case;
    ``rewards.format`` is the place that insists on lowercase.
    """
    # Tag by tag rather than findall(r"<answer>(.*?)</answer>"): the same pairs, but that regex retries every
    # opening tag when no closing one follows, quadratic in the length of a runaway completion.
    found, pos = None, 0
    while (opening := _OPEN_RE.search(text, pos)) and (closing := _CLOSE_RE.search(text, opening.end())):
        found, pos = text[opening.end() : closing.start()], closing.end()
    return found.strip() if found is not None else None


def contains_tag(text: str) -> bool:
    """Whether ``text`` holds a think/answer tag (in any case), e.g. the inner tag of a nested answer."""
    return _TAG_RE.search(text) is not None


def count_tags(text: str) -> int:
    """How many think/answer tags (in any case) ``text`` holds."""
    return len(_TAG_RE.findall(text))


def normalize_answer(text: str) -> str:
    """Case, dashes, surrounding punctuation/markdown and whitespace folded; yes/no synonyms mapped to yes/no."""
    norm = " ".join(text.lower().translate(_DASHES).split()).strip(" .,;:!?\"'*`")
    if norm in _YES:
        return "yes"
    if norm in _NO:
        return "no"
    return norm


def match_option(answer: str | None, options: Sequence[str]) -> str | None:
    """Map an answer to one of the options: by normalised text, or by option letter ("B", "(b)", "B. …").

    The whole answer must be one option, so a list of options ("yes and no") or a splice of two
    ("large (5–10 mm)") maps to None, as does a letter whose text names another option ("A. right lung").
    Text is tried before letters, so an option whose text is a letter keeps its meaning.
    """
    if answer is None:
        return None
    norm = normalize_answer(answer)
    by_text = {normalize_answer(o): o for o in options}
    if norm in by_text:
        return by_text[norm]
    letter = re.fullmatch(r"\(?([a-z])\)?(?:[.):]\s*(.*))?", norm)
    if letter:
        index = ord(letter.group(1)) - ord("a")
        if 0 <= index < len(options):
            rest = letter.group(2)
            if not rest or normalize_answer(rest) == normalize_answer(options[index]):
                return options[index]
    return None


def is_correct(completion: str, answer: str, options: Sequence[str]) -> bool:
    """Whether the completion's extracted answer is the ground-truth option."""
    chosen = match_option(extract_answer(completion), options) if options else None
    if chosen is not None:
        return normalize_answer(chosen) == normalize_answer(answer)
    extracted = extract_answer(completion)
    return extracted is not None and normalize_answer(extracted) == normalize_answer(answer)
