"""Calling reward functions on a batch of completions and stacking their checked outputs into one tensor."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

RewardFunc = Callable[..., Sequence[float | None]]
_SNIPPET_CHARS = 200


class RewardError(RuntimeError):
    """A reward function raised, or returned something other than one real number or None per completion."""


def reward_name(func: RewardFunc) -> str:
    """The name a reward is logged under: its ``name`` attribute, else ``__name__``, else its class name."""
    for attr in ("name", "__name__"):
        value = getattr(func, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(func).__name__


def _sample(i: int, completions: list[str], fields: dict[str, list]) -> str:
    ids = fields.get("id")
    where = f"sample {i}" + (f" (id {ids[i]!r})" if ids is not None else "")
    text = completions[i]
    snippet = text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "…"
    return f"{where}, completion {snippet!r}"


def _first_failing(func: RewardFunc, completions: list[str], fields: dict[str, list]) -> int | None:
    """The first sample on which ``func`` raises by itself; None if none does (the failure needs the batch)."""
    for i in range(len(completions)):
        try:
            func(completions[i : i + 1], **{k: v[i : i + 1] for k, v in fields.items()})
        except Exception:
            return i
    return None


def _as_float(v: numbers.Real) -> float:
    """``float(v)``, with an integer or fraction too large for a float as ±inf rather than OverflowError."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _checked(name: str, values: Any, n: int) -> list[float | None]:
    """The outputs as floats (None kept); NaN/inf are passed through for the caller's on_error policy."""
    if hasattr(values, "tolist") and not isinstance(values, list):  # a numpy array or tensor of rewards
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise RewardError(f"reward {name!r} must return a list of {n} values, got {type(values).__name__}")
    if len(values) != n:
        raise RewardError(f"reward {name!r} must return one value per completion: expected {n}, got {len(values)}")
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, numbers.Real):
            raise RewardError(f"reward {name!r} returned {v!r} at index {i}; need a real number or None")
    return [None if v is None else _as_float(v) for v in values]


def score_completions(
    reward_funcs: Sequence[RewardFunc],
    completions: list[str],
    fields: dict[str, list],
    on_error: Literal["raise", "none"] = "raise",
) -> tuple[torch.Tensor, dict[str, int]]:
    """Rewards as a float32 (len(completions), len(reward_funcs)) tensor, NaN where a reward returned None.

    Each function is called once as ``func(completions, **fields)``. A wrong-length or non-numeric output is a
    bug in the reward and always raises ``RewardError``. A raise, or a NaN/inf value, follows ``on_error``:
    "raise" raises ``RewardError`` naming the function and the sample (a raising function is re-run one sample
    at a time to find it); "none" scores it None and counts it in the returned {name: errors} dict. A function
    that raises yields no outputs at all, so it voids the whole batch for that function (count = batch size).
    Functions sharing a name share a count.
    """
    if on_error not in ("raise", "none"):
        raise ValueError(f"on_error must be 'raise' or 'none', not {on_error!r}")
    n = len(completions)
    for key, column in fields.items():
        if len(column) != n:
            raise ValueError(f"field {key!r} has {len(column)} entries for {n} completions")
    scores = torch.full((n, len(reward_funcs)), math.nan, dtype=torch.float32)
    errors = {reward_name(f): 0 for f in reward_funcs}
    for k, func in enumerate(reward_funcs):
        name = reward_name(func)
        try:
            values = func(completions, **fields)
        except Exception as err:
            if on_error == "none":
                errors[name] += n
                continue
            i = _first_failing(func, completions, fields)
            where = _sample(i, completions, fields) if i is not None else f"a batch of {n} (no single sample fails)"
            raise RewardError(f"reward {name!r} raised {type(err).__name__} on {where}: {err}") from err
        for i, v in enumerate(_checked(name, values, n)):
            if v is not None and not math.isfinite(v):
                if on_error == "raise":
                    raise RewardError(f"reward {name!r} returned {v} for {_sample(i, completions, fields)}")
                errors[name] += 1
            elif v is not None:
                scores[i, k] = v
    return scores, errors
