"""Formatting shared by the evaluation reports, plots and run folders: numbers to three decimals with "–" for
missing ones, Markdown tables, strict JSON, and the order question types are listed in."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DASH = "–"
QTYPE_ORDER: tuple[str, ...] = ("presence", "abnormality", "location", "size", "count")


def qtype_key(qtype: str) -> tuple[int, str]:
    """Sort key of a question type: ``QTYPE_ORDER`` first, any other type after them, alphabetically."""
    return (QTYPE_ORDER.index(qtype) if qtype in QTYPE_ORDER else len(QTYPE_ORDER), qtype)


def json_safe(value: Any) -> Any:
    """NaN/inf → None, recursively: strict JSON for other tools (Python's json would write bare NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def as_float(x: Any) -> float:
    """``x`` as a float; None, bools, strings and other non-numbers become NaN (a metric may be missing)."""
    if isinstance(x, bool) or x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def fmt(x: Any, signed: bool = False) -> str:
    """Three decimals, "–" for missing / NaN / infinite values."""
    v = as_float(x)
    if not math.isfinite(v):
        return DASH
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def cell(text: Any, limit: int | None = None) -> str:
    """One-line, pipe-escaped text for a Markdown table cell or list item, optionally shortened."""
    s = " ".join(str(text).split())
    if limit is not None and len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s.replace("|", "\\|")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> list[str]:
    """Lines of a Markdown table; columns left- ("l") or right-aligned ("r"), numbers right by default."""
    align = align or ["l", *["r"] * (len(header) - 1)]
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines
