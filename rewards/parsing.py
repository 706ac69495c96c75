"""Extracting and normalising answers from generated text; shared by validation, evaluation and rewards."""

from __future__ import annotations

import re
from collections.abc import Sequence

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_YES = {"yes", "y", "true", "present", "positive"}
_NO = {"no", "n", "false", "absent", "negative", "none"}


def extract_answer(text: str) -> str | None:
    """The text inside the last ``<answer>…</answer>``; None when there is none.

    The last one, because a model that revises itself writes the final answer last.
    """
    found = _ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def normalize_answer(text: str) -> str:
    """Case, surrounding punctuation and whitespace folded; yes/no synonyms mapped to yes/no."""
    norm = " ".join(text.lower().split()).strip(" .,;:!?\"'")
    if norm in _YES:
        return "yes"
    if norm in _NO:
        return "no"
    return norm


def match_option(answer: str | None, options: Sequence[str]) -> str | None:
    """Map an answer to one of the options: by normalised text, or by option letter ("B", "(b)", "B. …")."""
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
