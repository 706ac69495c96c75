"""Accuracy reward: 1 when the last ``<answer>`` is the ground truth, else 0."""

from __future__ import annotations

from collections.abc import Sequence

from rewards.parsing import is_correct


def accuracy_reward(
    completions: list[str], answer: list[str], options: list[Sequence[str]], **_: object
) -> list[float]:
    """1.0 when the last extracted answer is the same answer as ``answer``, else 0.0 (``rewards.parsing.same_answer``:
    the same option by text or letter in either convention, or the same normalised free text).

    Only the answer is judged: text around the tags is the format reward's concern, so a correct answer
    followed by stray text still scores 1 here. An empty answer scores 0 even against an empty ground truth.
    """
    return [float(is_correct(c, a, o)) for c, a, o in zip(completions, answer, options, strict=True)]
