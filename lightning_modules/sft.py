"""Supervised warm-up (SFT): answer-only cross-entropy on CT-VQA, validated by generating answers."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import torch

from datamodules.collate import IGNORE_INDEX, full_inputs
from lightning_modules.policy import PolicyModule
from models.attention import SdpaBackend
from models.loading import LoRASpec
from rl.config import as_args
from rl.decode_steps import DecodeArgs
from training.faults import FaultCounter, all_finite, gradients_finite


class SFTModule(PolicyModule):
    """SFT of a Qwen2.5-VL model on CT-VQA.

    Args:
        model_path: Hugging Face model directory (the embedded tiny default, or e.g. Qwen2.5-VL-3B-Instruct).
        build_embedded_if_missing: build the embedded tiny model at ``model_path`` if the directory is missing.
        lora: LoRA settings; null trains all (unfrozen) weights.
        freeze_vision: keep the vision tower fixed.
        learning_rate, weight_decay, warmup_steps, min_lr_ratio: AdamW with linear warmup + cosine decay.
        max_new_tokens: generation budget for validation answers.
        decoding: how answers are decoded: ``cache_implementation`` auto / static / dynamic (auto: a static cache
            on CUDA) and ``compile`` (CUDA graphs; null: on CUDA, unsharded) (``rl/decode_steps.py``).
        gradient_checkpointing: recompute activations in backward (real models on GPU).
        fsdp_param_dtype: compute dtype of FSDP2-gathered parameters (under ModelParallelStrategy only).
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2`` when installed.
        sdpa_backends: the kernels SDPA may use on GPUs (flash, efficient, cudnn, math); null = flash,
            efficient, math: cuDNN attention re-plans every new shape (``models/attention.py``).
        max_consecutive_faults: a step whose loss or gradient is not finite is skipped (no update), logged and
            counted (``train/skipped_steps``); this many in a row stop the run (0: never stop).
    """

    def __init__(
        self,
        model_path: str = "artifacts/tiny-qwen2.5-vl",
        build_embedded_if_missing: bool = True,
        lora: LoRASpec | None = None,
        freeze_vision: bool = False,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        max_new_tokens: int = 64,
        decoding: DecodeArgs = DecodeArgs(),  # noqa: B008 - frozen: a shared default is safe
        gradient_checkpointing: bool = False,
        fsdp_param_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str = "sdpa",
        sdpa_backends: list[SdpaBackend] | None = None,
        max_consecutive_faults: int = 10,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):  # LightningCLI may hand the dataclass over as a plain dict
            lora = LoRASpec(**lora)
        self.save_hyperparameters()
        self.hparams.update(lora=lora, decoding=asdict(as_args(decoding, DecodeArgs)))
        self.faults = FaultCounter(max_consecutive_faults)
        self._loss_fault: str | None = None  # set by training_step, settled with the gradients' check

    def forward(self, batch: dict[str, Any], logits_to_keep: int = 0) -> torch.Tensor:
        """Logits of prompt + target (the SFT view of the batch); of its last ``logits_to_keep`` positions only
        when that is not 0."""
        return self.model(**full_inputs(batch), use_cache=False, logits_to_keep=logits_to_keep).logits

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        # Position t predicts token t + 1. Shift the labels, not the logits: a slice of the (B, T, V) logits would
        # be copied for the loss, and its gradient copied back. The padded last column is ignored.
        labels = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
        # Rows are left-padded, so every answer sits at the end: the LM head and the cross-entropy run on the last
        # positions from the earliest supervised one, not on the prompts (image tokens, question), which are
        # most of each row. With a real vocabulary (151k) that is most of the head's time and of the logits' memory.
        supervised_columns = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        first = int(supervised_columns[0]) if supervised_columns.numel() else labels.size(1) - 1
        labels = labels[:, first:]
        logits = self(batch, logits_to_keep=labels.size(1)).float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
        supervised = labels != IGNORE_INDEX
        with torch.no_grad():  # the argmax of the answer tokens only, the positions the accuracy counts
            token_accuracy = (logits[supervised].argmax(-1) == labels[supervised]).float().mean()
        return loss, token_accuracy

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not batch:  # every sample of the batch was a skipped bad sample
            return None
        loss, token_accuracy = self._loss(batch)
        if not all_finite([loss], self.device):  # decided on all ranks at once: all of them skip the backward
            self._loss_fault = f"a non-finite loss ({loss.item()})"
            return None
        size = len(batch["meta"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/token_accuracy", token_accuracy, prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update (drop the gradients) of a step with a non-finite loss or gradient; count it."""
        fault, self._loss_fault = self._loss_fault, None
        if fault is None and not gradients_finite(self.model, self.device):
            fault = "a non-finite gradient"
        if self.faults.record(fault, self.global_step):
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradients untouched
        self.log("train/skipped_steps", float(self.faults.total), batch_size=1)

    def eval_loss(self, batch: dict[str, Any], prefix: str) -> None:
        loss, _ = self._loss(batch)
        self.log(f"{prefix}/loss", loss, batch_size=len(batch["meta"]), sync_dist=True)
