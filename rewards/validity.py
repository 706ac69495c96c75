"""Validity reward: the answer is one admissible answer to its question, right or wrong."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rewards.parsing import contains_tag, extract_answer, match_option, normalize_answer

_WORD_RE = re.compile(r"[a-z]+")


def _is_valid(completion: str, options: Sequence[str], question_type: str | None) -> bool:
    answer = extract_answer(completion)
    if not answer or contains_tag(answer):
        return False
    if options:
        # match_option needs the whole answer to be one option, so "yes/no" and option splices fail here.
        return match_option(answer, options) is not None
    norm = normalize_answer(answer)
    if question_type == "presence":
        return norm in ("yes", "no")
    # Literal words only: synonyms such as "none" or "negative" occur in honest free-text answers.
    return not {"yes", "no"} <= set(_WORD_RE.findall(norm))


def validity_reward(
    completions: list[str], options: list[Sequence[str]], question_type: list[str] | None = None, **_: object
) -> list[float]:
    """1.0 when the last ``<answer>`` holds exactly one admissible answer, else 0.0 (also with no ``<answer>``).

    With options: the answer is one option by text or letter (see ``rewards.parsing.match_option``). Without:
    a presence question needs a yes/no (synonyms count), any other question a non-empty answer that does not
    say both "yes" and "no". An empty answer, or one holding a tag (a nested ``<answer>``), is never valid.
    """
    types = question_type if question_type is not None else [None] * len(completions)
    return [float(_is_valid(c, o, t)) for c, o, t in zip(completions, options, types, strict=True)]
