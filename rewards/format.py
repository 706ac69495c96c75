"""Format reward: the completion is exactly the tag layout the prompt asked for."""

from __future__ import annotations

import re

from rewards.parsing import contains_tag, count_tags

# Lowercase tags only: SFT teaches lowercase, and "<ANSWER>" is a drift GRPO should not reinforce.
_LAYOUTS = {
    "think": re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL),
    "no_think": re.compile(r"\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL),
}


def _well_formed(completion: str, prompt_format: str) -> bool:
    layout = _LAYOUTS.get(prompt_format)
    if layout is None:
        raise ValueError(f"prompt_format must be one of {sorted(_LAYOUTS)}, not {prompt_format!r}")
    # A well-formed completion holds exactly its layout's tags, two per block. Counting first also keeps the
    # fullmatch linear: its lazy blocks would otherwise try every "</think>" × "</answer>" of a runaway completion.
    if count_tags(completion) != 2 * layout.groups:
        return False
    match = layout.fullmatch(completion)
    if match is None or any(contains_tag(part) for part in match.groups()):
        return False
    # An empty think is the no-reasoning shortcut, which no other reward would catch.
    return prompt_format != "think" or bool(match["think"].strip())


def format_reward(completions: list[str], prompt_format: list[str] | None = None, **_: object) -> list[float]:
    """1.0 for ``<think>…</think><answer>…</answer>`` ("think", the default) or ``<answer>…</answer>`` ("no_think").

    Only whitespace may surround or separate the blocks; each tag appears once, in order and in lowercase, and
    no tag (in any case) appears inside a block. The think block must hold some text. An empty answer passes
    here: whether the answer is admissible is ``validity_reward``'s job.
    """
    formats = prompt_format if prompt_format is not None else ["think"] * len(completions)
    return [float(_well_formed(c, f)) for c, f in zip(completions, formats, strict=True)]
