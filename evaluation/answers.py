"""Answering CT-VQA batches for validation, test and predict: greedy answers, p(yes), scored prediction rows."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from evaluation.formatting import fmt
from evaluation.metrics import prediction_row
from rl.decode_steps import DecodeArgs
from rl.grouped_forward import completion_logits
from rl.sampling import SamplingConfig, sample_completions
from rl.static_decode import StaticDecodeSteps

_ANSWER_OPEN_RE = re.compile(r"<answer>", re.IGNORECASE)


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    batch: dict[str, Any],
    max_new_tokens: int,
    eos_token_ids: list[int],
    suppress_token_ids: list[int],
    decoding: DecodeArgs = DecodeArgs(),  # noqa: B008 - frozen: a shared default is safe
    static_steps: StaticDecodeSteps | None = None,
) -> list[str]:
    """Greedy completions for the batch's prompts, decoded without special tokens.

    The same decode loop as GRPO's rollouts (one answer per prompt, no sampling), so it is safe under FSDP2;
    ``decoding`` and ``static_steps`` as in ``rl.sampling.sample_completions``.
    """
    rollout = sample_completions(
        model,
        batch,
        num_generations=1,
        sampling=SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False, decoding=decoding),
        eos_token_ids=eos_token_ids,
        pad_token_id=tokenizer.pad_token_id,
        suppress_token_ids=suppress_token_ids,
        static_steps=static_steps,
    )
    return tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)


def answer_prefix(completion: str) -> str:
    """The completion up to where its answer starts: through ``<answer>`` when written, else its reasoning
    followed by ``<answer>`` (so a model that skipped the tag is still asked for its answer there)."""
    opened = list(_ANSWER_OPEN_RE.finditer(completion))
    if opened:  # the last one: the answer that is graded (rewards.parsing.extract_answer)
        return completion[: opened[-1].end()]
    closed = completion.lower().find("</think>")
    if closed >= 0:
        return completion[: closed + len("</think>")] + "<answer>"
    return "<answer>"


def first_token_id(tokenizer: Any, text: str) -> int:
    """The token a model emits first when it starts writing ``text`` right after ``<answer>``.

    Read off the tokenization of ``<answer>`` + text, because BPE may merge ``>`` with the next letters when
    ``<answer>`` is plain text (real Qwen tokenizers) rather than one added token (the embedded one).
    """
    prefix = tokenizer("<answer>", add_special_tokens=False)["input_ids"]
    full = tokenizer("<answer>" + text, add_special_tokens=False)["input_ids"]
    if full[: len(prefix)] == prefix and len(full) > len(prefix):
        return full[len(prefix)]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer gives no tokens for {text!r}")
    return ids[0]


@torch.no_grad()
def yes_probabilities(
    model: torch.nn.Module,
    tokenizer: Any,
    batch: dict[str, Any],
    completions: Sequence[str],
    yes_no_ids: tuple[int, int],
) -> list[float]:
    """p(yes) = softmax over the logits of "yes" and "no" as the first answer token, after the model's own
    reasoning (one teacher-forced forward over prompt + ``answer_prefix``). The score for AUROC and calibration.
    """
    rows = [tokenizer(answer_prefix(c), add_special_tokens=False)["input_ids"] for c in completions]
    length = max(len(r) for r in rows) + 1  # +1: a slot whose logits are the prediction after the prefix
    device = batch["prompt_input_ids"].device
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r) + 1] = 1
    logits = completion_logits(model, batch, ids, mask)
    at_answer = logits[torch.arange(len(rows), device=device), torch.tensor([len(r) for r in rows], device=device)]
    pair = at_answer[:, list(yes_no_ids)].float()
    return torch.softmax(pair, dim=-1)[:, 0].tolist()


def prediction_rows(
    model: torch.nn.Module,
    tokenizer: Any,
    batch: dict[str, Any],
    completions: Sequence[str],
    yes_no_ids: tuple[int, int] | None,
) -> list[dict[str, Any]]:
    """Scored rows for the batch; presence questions get p(yes) when ``yes_no_ids`` is given."""
    metas = batch["meta"]
    p_yes: list[float | None] = [None] * len(metas)
    # Under several processes the forward is a collective (FSDP2 gathers weights): every rank must run it.
    sharded = torch.distributed.is_available() and torch.distributed.is_initialized()
    if yes_no_ids is not None and (sharded or any(m["question_type"] == "presence" for m in metas)):
        probs = yes_probabilities(model, tokenizer, batch, completions, yes_no_ids)
        p_yes = [p if m["question_type"] == "presence" else None for p, m in zip(probs, metas, strict=True)]
    return [prediction_row(c, m, p) for c, m, p in zip(completions, metas, p_yes, strict=True)]


def print_results(results: dict[str, Any], question_types: Sequence[str], title: str) -> None:
    """Rich tables: accuracy against chance per question type, then the diagnosis metrics that were computed."""
    console = Console()
    table = Table(title=f"CT-VQA {title}")
    for column in ("question type", "n", "accuracy", "chance", "Δ vs chance"):
        table.add_column(column, justify="left" if column == "question type" else "right")
    total = 0
    for name in question_types:
        if f"n/{name}" in results:
            acc, chance, n = results[f"accuracy/{name}"], results[f"chance/{name}"], int(results[f"n/{name}"])
            total += n
            table.add_row(name, str(n), fmt(acc), fmt(chance), f"{acc - chance:+.3f}")
    acc, chance = results["accuracy"], results["chance"]
    table.add_row("all", str(total), fmt(acc), fmt(chance), f"{acc - chance:+.3f}", style="bold")
    console.print(table)
    headline = ["format_rate", "validity_rate", "macro_f1", "micro_f1", "auroc", "auprc", "ece", "bleu", "rouge_l"]
    console.print("  ".join(f"{k}: {fmt(results[k])}" for k in headline if k in results))
