"""How the next token is chosen from a step's logits: suppressed tokens, transformers' logits warpers (the ones
``generate`` applies), then the argmax or a multinomial draw. Shared by the eager and the static decode steps."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def logits_warpers(sampling: Any) -> LogitsProcessorList:
    """transformers' warpers for ``sampling`` (``rl.sampling.SamplingConfig``): temperature, then top-k (if
    ``top_k`` > 0), then top-p (if ``top_p`` < 1), the order ``generate`` applies them in; filtered tokens get
    -inf. Empty when not sampling.

    Raises ValueError (from transformers) for a temperature <= 0 or a negative top-p. Top-p keeps at least
    the most likely token, also at ``top_p`` = 0.
    """
    warpers = LogitsProcessorList()
    if not sampling.do_sample:
        return warpers
    warpers.append(TemperatureLogitsWarper(float(sampling.temperature)))
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def draw(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row, (N,), from filtered ``scores``, (N, V) (``filtered_scores``): the argmax,
    or with ``do_sample`` a draw from their softmax."""
    if not do_sample:
        return scores.argmax(-1)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)


def filtered_scores(
    logits: torch.Tensor, warpers: LogitsProcessorList, suppress: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token ``logits``, (N, V), as float32 with ``suppress`` (token ids) at -inf, then the ``warpers``
    (temperature, top-k, top-p; none when greedy): what a token is drawn from (argmax, or softmax + multinomial)."""
    logits = logits.float()
    if suppress is not None:
        logits = logits.index_fill(1, suppress, -torch.inf)  # out of place: the caller logs the unmasked log-probs
    return warpers(None, logits) if len(warpers) else logits  # these warpers read only the scores
