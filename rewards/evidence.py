"""Evidence reward: pays when the reasoning names a candidate view that shows the lesion and the answer is right.

As DeepEyes pays its grounding bonus only on correct answers (Zheng et al., 2025, arXiv 2505.14362), this reward
is 1 only when both hold, so it teaches where to look without paying for a lucky view under a wrong answer. The
evidence is the first ``View k`` the completion names (``datamodules/views.py`` labels the views so); a view shows
the lesion when its slab meets the finding's lesion mask (``shows_lesion``, written by the VQA builder).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rewards.parsing import is_correct, normalize_answer

VIEW_RE = re.compile(r"\bview\s+(\d+)\b", re.IGNORECASE)


def named_view(completion: str) -> int | None:
    """The 1-based number of the first ``View k`` the completion names, or None."""
    found = VIEW_RE.search(completion)
    return int(found.group(1)) if found else None


def evidence_view_reward(
    completions: list[str],
    answer: list[str],
    options: list[Sequence[str]],
    views: list[list[dict[str, Any]] | None],
    **_: object,
) -> list[float | None]:
    """Per completion: 1.0 when its answer is right and the first view it names shows the lesion, else 0.0; None
    (not applicable) when the question has no views, no view carries a lesion mask (``shows_lesion`` null), or
    the true answer is "no" (there is no lesion to point at)."""
    out: list[float | None] = []
    for completion, truth, opts, shown in zip(completions, answer, options, views, strict=True):
        if not shown or all(v.get("shows_lesion") is None for v in shown) or normalize_answer(truth) == "no":
            out.append(None)
            continue
        k = named_view(completion)
        hit = k is not None and 1 <= k <= len(shown) and bool(shown[k - 1].get("shows_lesion"))
        out.append(float(hit and is_correct(completion, truth, opts)))
    return out
