"""Accuracy reward: 1 when the last ``<answer>`` is the ground truth, else 0."""

from __future__ import annotations

from collections.abc import Sequence

from rewards.parsing import is_correct


def accuracy_reward(
    completions: list[str], answer: list[str], options: list[Sequence[str]], **_: object
) -> list[float]:
    """1.0 when the extracted answer matches ``answer`` by option text or letter (see ``rewards.parsing``), else 0.0.

    Only the answer is judged: text around the tags is the format reward's concern, so a correct answer
    followed by stray text still scores 1 here.
    """
    return [float(is_correct(c, a, o)) for c, a, o in zip(completions, answer, options, strict=True)]
