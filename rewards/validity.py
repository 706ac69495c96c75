"""Validity reward: the answer is one admissible answer to its question, right or wrong."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rewards.parsing import contains_tag, extract_answers, normalize_answer, option_index, same_answer

_WORD_RE = re.compile(r"[a-z]+")


def _admissible(answer: str, options: Sequence[str], question_type: str | None) -> bool:
    if not answer or contains_tag(answer):
        return False
    if options:
        # option_index needs the whole answer to be one option, so "yes/no" and option splices fail here.
        return option_index(answer, options) is not None
    norm = normalize_answer(answer)
    if question_type == "presence":
        return norm in ("yes", "no")
    # Literal words only: synonyms such as "none" or "negative" occur in honest free-text answers.
    return bool(norm) and not {"yes", "no"} <= set(_WORD_RE.findall(norm))


def _is_valid(completion: str, options: Sequence[str], question_type: str | None) -> bool:
    answers = extract_answers(completion)
    if not answers or not all(_admissible(a, options, question_type) for a in answers):
        return False
    return all(same_answer(a, answers[-1], options) for a in answers[:-1])


def validity_reward(
    completions: list[str], options: list[Sequence[str]], question_type: list[str] | None = None, **_: object
) -> list[float]:
    """1.0 when the completion's ``<answer>`` blocks each hold one admissible answer and all the same one, else
    0.0 (also with no ``<answer>``).

    With options: the answer denotes one option by text, letter or both (see ``rewards.parsing.option_index``).
    Without: a presence question needs a yes/no (synonyms count), any other question a non-empty answer that
    does not say both "yes" and "no". An empty answer, or one holding a tag (a nested ``<answer>``), is never
    valid. Several blocks are valid only when they agree (``rewards.parsing.same_answer``: "B" and
    "B. Emphysema" do, "yes" and "no" do not): two contradictory answers are no admissible answer, although
    the accuracy reward judges only the last one.
    """
    types = question_type if question_type is not None else [None] * len(completions)
    return [float(_is_valid(c, o, t)) for c, o, t in zip(completions, options, types, strict=True)]
