"""Extracting, normalising and resolving answers; the one place validation, evaluation and rewards compare them.

Two answers are the same answer when ``same_answer`` says so: with options, when they denote the same option
(``option_index``); without, when their ``normalize_answer`` forms are equal and not empty.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

_OPEN_RE = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE_RE = re.compile(r"</answer>", re.IGNORECASE)
_TAG_RE = re.compile(r"</?\s*(?:think|answer)\s*>", re.IGNORECASE)
# Hyphen, non-breaking hyphen, figure dash, en dash, em dash, minus: options are written with "–", models type "-".
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212", "-"))
# Dotted capital İ casefolds to "i" + combining dot above, and Turkish ı has no case partner in a locale-free fold;
# both become plain "i" (see normalize_answer).
_TURKISH_I_RE = re.compile("[iı]\u0307+|ı")
_PUNCTUATION = " .,;:!?\"'*`"
_YES = {"yes", "y", "true", "present", "positive"}
_NO = {"no", "n", "false", "absent", "negative", "none"}
# An option letter, alone or followed by a separator and text: "b", "(b)", "b)", "b.", "b: emphysema",
# "(b) emphysema". Text needs a separator first, so "bronchiectasis" is no letter b.
_LETTER_RE = re.compile(r"\(?([a-z])(?:\)[.:]?|[.:])?(?:(?<=[).:])\s*(.+))?", re.DOTALL)


def extract_answers(text: str) -> list[str]:
    """The text inside every ``<answer>…</answer>``, in order and stripped; [] when there is none.

    Tags match in any case (``rewards.format`` is the place that insists on lowercase). A nested answer
    (``<answer><answer>x</answer></answer>``) gives one block holding the inner opening tag.
    """
    # Tag by tag rather than findall(r"<answer>(.*?)</answer>"): the same pairs, but that regex retries every
    # opening tag when no closing one follows, quadratic in the length of a runaway completion.
    found, pos = [], 0
    while (opening := _OPEN_RE.search(text, pos)) and (closing := _CLOSE_RE.search(text, opening.end())):
        found.append(text[opening.end() : closing.start()].strip())
        pos = closing.end()
    return found


def extract_answer(text: str) -> str | None:
    """The text inside the last ``<answer>…</answer>``; None when there is none.

    The last one, because a model that revises itself writes the final answer last.
    """
    answers = extract_answers(text)
    return answers[-1] if answers else None


def contains_tag(text: str) -> bool:
    """Whether ``text`` holds a think/answer tag (in any case), e.g. the inner tag of a nested answer."""
    return _TAG_RE.search(text) is not None


def count_tags(text: str) -> int:
    """How many think/answer tags (in any case) ``text`` holds."""
    return len(_TAG_RE.findall(text))


def _invisible(char: str) -> bool:
    """A format character (zero-width space, BOM, soft hyphen, ...) or a control character other than whitespace."""
    category = unicodedata.category(char)
    return category == "Cf" or (category == "Cc" and not char.isspace())


def normalize_answer(text: str) -> str:
    """The form every answer comparison uses: two answers a reader takes as equal normalise to the same string.

    In order: invisible characters (Unicode format characters such as U+200B, U+FEFF, the soft hyphen, and
    non-whitespace control characters) are dropped; the text gets Unicode's compatibility caseless fold
    (NFKD ∘ casefold ∘ NFKD ∘ casefold ∘ NFD, so "ﬁ", "Ｙｅｓ", "e" + U+0301 and "ß" match "fi", "yes", "é",
    "ss"); every i, whether dotted, dotless or from "İ", becomes "i" (a fold that knows no language cannot
    pair Turkish I/ı and İ/i with English I/i otherwise, and answers that differ by that dot alone are rare); then NFC,
    dashes to "-", whitespace collapsed, surrounding punctuation/markdown stripped, yes/no synonyms mapped to
    yes/no. Accents stay: "ş" and "s" are different letters. Idempotent; "" when nothing is left.
    """
    # isprintable() is False for every character _invisible drops: the common all-printable answer skips the loop.
    visible = text if text.isprintable() else "".join(c for c in text if not _invisible(c))
    folded = unicodedata.normalize("NFD", visible).casefold()
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", folded).casefold())
    folded = unicodedata.normalize("NFC", _TURKISH_I_RE.sub("i", folded))
    norm = " ".join(folded.translate(_DASHES).split()).strip(_PUNCTUATION)
    if norm in _YES:
        return "yes"
    if norm in _NO:
        return "no"
    return norm


def _letters_and_texts(keys: Sequence[str]) -> tuple[list[str | None], list[str]]:
    """Each option's letter and its normalised text without that letter, from the options' normalised ``keys``.

    Options all written with distinct letters ("A. Cardiomegaly", "B. Emphysema": the convention of OmniMedVQA,
    PMC-VQA, Med-R1) keep their own letters; otherwise option i has letter i ("a", "b", …; None past "z") and its
    whole text.
    """
    parsed = [_LETTER_RE.fullmatch(k) for k in keys]
    letters = [m[1] if m and m[2] else None for m in parsed]
    if keys and all(letters) and len(set(letters)) == len(letters):
        return letters, [normalize_answer(m[2]) for m in parsed if m]
    return [chr(ord("a") + i) if i < 26 else None for i in range(len(keys))], list(keys)


def option_index(answer: str | None, options: Sequence[str]) -> int | None:
    """Which option ``answer`` denotes (its index), or None; the one resolver for gold and model answers alike.

    An answer denotes an option by the option's whole text, by its letter ("B", "(b)", "B)"), by letter and
    text ("B. Emphysema", which must agree: "A. emphysema" denotes nothing) or, for lettered options, by the
    text after the letter ("Emphysema" for "B. Emphysema"); all compared after ``normalize_answer``. Whole
    text is tried first, so an option whose text is a letter keeps its meaning; then the letter, so a bare "B"
    among lettered options is the letter B. A list or splice of options ("yes and no", "large (5–10 mm)")
    denotes nothing, nor does an empty answer. With repeated options the first wins.
    """
    if answer is None or not (norm := normalize_answer(answer)):
        return None
    keys = [normalize_answer(o) for o in options]
    if norm in keys:
        return keys.index(norm)
    letters, texts = _letters_and_texts(keys)
    letter = _LETTER_RE.fullmatch(norm)
    if letter and letter[1] in letters:
        i = letters.index(letter[1])
        return i if letter[2] is None or normalize_answer(letter[2]) == texts[i] else None
    return texts.index(norm) if norm in texts else None


def match_option(answer: str | None, options: Sequence[str]) -> str | None:
    """The option ``answer`` denotes (see ``option_index``), as written in ``options``; None when none."""
    i = option_index(answer, options)
    return None if i is None else options[i]


def answer_text(answer: str | None, options: Sequence[str]) -> str | None:
    """The normalised text of what ``answer`` denotes: its option's text without the letter (with options) or
    the answer itself (without); None when it denotes no option or is empty. E.g. "A" → "yes" for
    ["A. Yes", "B. No"]."""
    if not options:
        norm = normalize_answer(answer) if answer is not None else ""
        return norm or None
    i = option_index(answer, options)
    return None if i is None else _letters_and_texts([normalize_answer(o) for o in options])[1][i]


def same_answer(first: str | None, second: str | None, options: Sequence[str]) -> bool:
    """Whether two answers are the same answer: the same option with options, the same non-empty normalised
    text without. An empty or missing answer is never the same as anything."""
    if options:
        i = option_index(first, options)
        return i is not None and i == option_index(second, options)
    return answer_text(first, options) is not None and answer_text(first, options) == answer_text(second, options)


def is_correct(completion: str, answer: str, options: Sequence[str]) -> bool:
    """Whether the completion's last ``<answer>`` is the same answer as the ground truth ``answer``."""
    return same_answer(extract_answer(completion), answer, options)
