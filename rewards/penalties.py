"""Shaping penalties that need no ground truth: DAPO's overlong penalty and open-r1's n-gram repetition."""

from __future__ import annotations


class LengthPenalty:
    """DAPO's soft overlong punishment on the completion's token count ``L``.

    With ``M = max_length`` and ``B = buffer``::

        0                            if L <= M - B
        penalty · (L - (M - B)) / B  if M - B < L <= M
        penalty                      if L > M

    so the penalty ramps linearly across the last ``B`` tokens of the budget, and a truncated completion (L = M)
    gets all of it. ``penalty`` should be <= 0; ``buffer=0`` is a hard cut beyond ``M``.
    ``max_length`` defaults to each sample's ``max_completion_length`` field.
    """

    name = "length_penalty"

    def __init__(self, max_length: int | None = None, buffer: int = 16, penalty: float = -1.0) -> None:
        if max_length is not None and max_length < 1:
            raise ValueError(f"LengthPenalty: max_length must be a positive token count, not {max_length}")
        if buffer < 0:
            raise ValueError(f"LengthPenalty: buffer must be >= 0, not {buffer}")
        self.max_length = max_length
        self.buffer = buffer
        self.penalty = penalty

    def _one(self, length: int, max_length: int) -> float:
        start = max_length - self.buffer
        if length <= start:
            return 0.0
        if length >= max_length:
            return self.penalty
        return self.penalty * (length - start) / self.buffer

    def __call__(
        self,
        completions: list[str],
        completion_length: list[int],
        max_completion_length: list[int] | None = None,
        **_: object,
    ) -> list[float]:
        if self.max_length is not None:
            budgets = [self.max_length] * len(completions)
        elif max_completion_length is not None:
            budgets = max_completion_length
        else:
            raise ValueError("LengthPenalty: set max_length or pass the max_completion_length field")
        return [self._one(n, m) for n, m in zip(completion_length, budgets, strict=True)]


class RepetitionPenalty:
    """open-r1's repetition penalty: ``(1 - unique / total) · penalty`` over the word n-grams of a completion.

    Words are whitespace-split and lowercased; a completion with fewer than ``ngram_size`` words scores 0.
    """

    name = "repetition_penalty"

    def __init__(self, ngram_size: int = 3, penalty: float = -1.0) -> None:
        if ngram_size < 1:
            raise ValueError(f"RepetitionPenalty: ngram_size must be >= 1, not {ngram_size}")
        self.ngram_size = ngram_size
        self.penalty = penalty

    def _one(self, completion: str) -> float:
        words = completion.lower().split()
        ngrams = [tuple(words[i : i + self.ngram_size]) for i in range(len(words) - self.ngram_size + 1)]
        if not ngrams:
            return 0.0
        return (1 - len(set(ngrams)) / len(ngrams)) * self.penalty

    def __call__(self, completions: list[str], **_: object) -> list[float]:
        return [self._one(c) for c in completions]
