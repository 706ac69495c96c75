"""Answer generation and exact-match accuracy per question type, shared by the SFT and GRPO modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torchmetrics import Metric

from lightning_modules.rollout import SamplingConfig, sample_completions
from rewards.parsing import extract_answer, is_correct


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    batch: dict[str, Any],
    max_new_tokens: int,
    eos_token_ids: list[int],
    suppress_token_ids: list[int],
) -> list[str]:
    """Greedy completions for the batch's prompts, decoded without special tokens.

    The same decode loop as GRPO's rollouts (one answer per prompt, no sampling), so it is safe under FSDP2.
    """
    rollout = sample_completions(
        model,
        batch,
        num_generations=1,
        sampling=SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False),
        eos_token_ids=eos_token_ids,
        pad_token_id=tokenizer.pad_token_id,
        suppress_token_ids=suppress_token_ids,
    )
    return tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)


class VQAAccuracy(Metric):
    """Exact-match accuracy overall and per question type, with the chance level of the same questions.

    Chance is 1 / number of options, averaged over the questions seen: the bar a model that ignores the
    image (and the question's prior) would reach. Sums are ``dist_reduce_fx="sum"`` states, so the values
    are exact across batches and devices.
    """

    full_state_update = False

    def __init__(self, question_types: Sequence[str]) -> None:
        super().__init__()
        self.question_types = list(question_types)
        n = len(self.question_types)
        for name in ("correct", "chance", "count", "formatted"):
            self.add_state(name, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, completions: Sequence[str], meta: Sequence[dict[str, Any]]) -> None:
        for completion, m in zip(completions, meta, strict=True):
            t = self.question_types.index(m["question_type"])
            self.count[t] += 1
            self.correct[t] += float(is_correct(completion, m["answer"], m["options"]))
            self.chance[t] += 1.0 / max(1, len(m["options"]))
            self.formatted[t] += float(extract_answer(completion) is not None)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.count.sum().clamp(min=1)
        results = {
            "accuracy": self.correct.sum() / total,
            "chance": self.chance.sum() / total,
            "format_rate": self.formatted.sum() / total,
        }
        for t, name in enumerate(self.question_types):
            if self.count[t] > 0:
                results[f"accuracy/{name}"] = self.correct[t] / self.count[t]
                results[f"chance/{name}"] = self.chance[t] / self.count[t]
                results[f"n/{name}"] = self.count[t]
        return {k: v.float() for k, v in results.items()}

    def print_report(self, results: dict[str, torch.Tensor], title: str) -> None:
        """A rich table: accuracy against chance per question type."""
        table = Table(title=f"CT-VQA {title}")
        for column in ("question type", "n", "accuracy", "chance", "Δ vs chance"):
            table.add_column(column, justify="right" if column != "question type" else "left")
        for name in self.question_types:
            if f"n/{name}" in results:
                acc, chance = results[f"accuracy/{name}"].item(), results[f"chance/{name}"].item()
                table.add_row(
                    name, f"{int(results[f'n/{name}'])}", f"{acc:.3f}", f"{chance:.3f}", f"{acc - chance:+.3f}"
                )
        acc, chance = results["accuracy"].item(), results["chance"].item()
        table.add_row(
            "all",
            f"{int(sum(results[k].item() for k in results if k.startswith('n/')))}",
            f"{acc:.3f}",
            f"{chance:.3f}",
            f"{acc - chance:+.3f}",
            style="bold",
        )
        Console().print(table)
        Console().print(f"format rate: {results['format_rate'].item():.3f}")
