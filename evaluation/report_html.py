"""The HTML page of an evaluation run folder (``report.html``): the cases with the image the model saw beside the
question, reasoning, answer and truth, which Markdown cannot lay side by side. Plain HTML and CSS, no scripts;
the numbers stay in ``report.md``, which the page links."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from evaluation.formatting import DASH, fmt, qtype_key
from evaluation.report import answer_flags

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
.case{display:flex;gap:1em;border-top:1px solid #ddd;padding:.8em 0}
.case img{width:224px;height:auto;image-rendering:pixelated;flex:none}
.wrong h4{color:#b00}.right h4{color:#070}h4{margin:.2em 0}p{margin:.3em 0}
code{background:#f3f3f3;padding:0 .2em}.plots img{max-width:100%}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _case(p: Mapping[str, Any], image: str | None) -> str:
    answer = p.get("answer")
    flags = answer_flags(p)
    verdict = "right" if p.get("correct") else "wrong"
    picture = f'<img src="{_e(image)}" alt="image of {_e(p.get("id"))}">' if image else "<p>(image not available)</p>"
    # Without parsed reasoning, the raw completion is what explains an unformatted answer (as in report.md).
    label, text = ("Reasoning", p.get("reasoning")) if p.get("reasoning") else ("Completion", p.get("completion"))
    text = " ".join(str(text or "").split())
    return "\n".join(
        [
            f'<div class="case {verdict}">{picture}<div>',
            f"<h4>{_e(p.get('id', '?'))} · {verdict}</h4>",
            f"<p><small>{_e(p.get('volume_name', '?'))}</small></p>",
            f"<p><b>Q:</b> {_e(p.get('question', ''))}</p>",
            f"<p><b>Options:</b> {' / '.join(_e(o) for o in p.get('options') or [])}</p>",
            f"<p><b>{label}:</b> {_e(text)}</p>" if text else "",
            f"<p><b>Answer:</b> {DASH if answer is None else f'<code>{_e(answer)}</code>'}"
            + (f" ({', '.join(flags)})" if flags else "")
            + f" · <b>Truth:</b> <code>{_e(p.get('truth', ''))}</code></p>",
            "</div></div>",
        ]
    )


def render_html(
    info: Mapping[str, Any],
    metrics: Mapping[str, Any],
    cases: Sequence[Mapping[str, Any]],
    images: Mapping[str, str],
    plots: Mapping[str, str],
) -> str:
    """The page: run name and headline accuracy, the plots, and the cases grouped by question type (wrong first).

    ``images``: case id → PNG path relative to the page; ``plots``: plot key → PNG path relative to the page.
    """
    name = info.get("name") or "evaluation"
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>Evaluation report: {_e(name)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Evaluation report: {_e(name)}</h1>",
        f"<p>Split <code>{_e(info.get('split') or DASH)}</code>, {_e(info.get('num_samples', DASH))} samples, "
        f"accuracy {fmt(metrics.get('accuracy'))}. Every metric, the reproduction command and the tables: "
        '<a href="report.md">report.md</a>.</p>',
    ]
    if plots:
        out += ['<h2>Plots</h2><div class="plots">']
        out += [f'<p><img src="{_e(path)}" alt="{_e(key)}"></p>' for key, path in plots.items()]
        out += ["</div>"]
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for p in cases:
        by_type.setdefault(str(p.get("question_type")), []).append(p)
    if by_type:
        out += [
            "<h2>Cases</h2>",
            "<p>A fixed-seed sample of wrong and right answers per question type, each with the "
            "image the model was given (global view with the ROI outlined and its zoomed inset).</p>",
        ]
    for qtype in sorted(by_type, key=qtype_key):
        acc = fmt(metrics.get(f"accuracy/{qtype}"))
        out += [f"<h3>{_e(qtype)} <small>(accuracy {acc})</small></h3>"]
        ordered = sorted(by_type[qtype], key=lambda p: bool(p.get("correct")))
        out += [_case(p, images.get(str(p.get("id")))) for p in ordered]
    return "\n".join([*out, "</body></html>"]) + "\n"
