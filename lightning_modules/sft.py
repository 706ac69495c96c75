"""Supervised warm-up (SFT): answer-only cross-entropy on CT-VQA, validated by generating answers."""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch

from datamodules.collate import IGNORE_INDEX
from datamodules.vqa_records import QUESTION_TYPES
from lightning_modules.model_loading import LoRASpec, ensure_model_dir, load_model, load_processor
from lightning_modules.schedules import warmup_cosine
from lightning_modules.vqa_eval import VQAAccuracy, generate_answers

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SFTModule(L.LightningModule):
    """SFT of a Qwen2.5-VL model on CT-VQA.

    Args:
        model_path: Hugging Face model directory (the embedded tiny default, or e.g. Qwen2.5-VL-3B-Instruct).
        build_embedded_if_missing: build the embedded tiny model at ``model_path`` if the directory is missing.
        lora: LoRA settings; null trains all (unfrozen) weights.
        freeze_vision: keep the vision tower fixed.
        learning_rate, weight_decay, warmup_steps, min_lr_ratio: AdamW with linear warmup + cosine decay.
        max_new_tokens: generation budget for validation answers.
        gradient_checkpointing: recompute activations in backward (real models on GPU).
        fsdp_param_dtype: compute dtype of FSDP2-gathered parameters (under ModelParallelStrategy only).
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2`` when installed.
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
        gradient_checkpointing: bool = False,
        fsdp_param_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):  # LightningCLI may hand the dataclass over as a plain dict
            lora = LoRASpec(**lora)
        self.save_hyperparameters()
        self.hparams.lora = lora
        self.model: torch.nn.Module | None = None
        self.val_accuracy = VQAAccuracy(QUESTION_TYPES)

    def prepare_data(self) -> None:
        """Build the embedded tiny model if it is configured and missing (rank 0, before any setup)."""
        ensure_model_dir(self.hparams.model_path, self.hparams.build_embedded_if_missing)

    def configure_model(self) -> None:
        """Load (and, under ModelParallelStrategy, shard) the model; called once on every rank."""
        if self.model is not None:
            return
        path = ensure_model_dir(self.hparams.model_path, build_embedded_if_missing=False)
        self.tokenizer = load_processor(path).tokenizer
        self.model = load_model(
            path,
            lora=self.hparams.lora,
            freeze_vision=self.hparams.freeze_vision,
            attn_implementation=self.hparams.attn_implementation,
            gradient_checkpointing=self.hparams.gradient_checkpointing,
        )
        self.model.train()  # from_pretrained returns eval mode; Lightning toggles modes per loop from here
        if getattr(self, "device_mesh", None) is not None:
            from lightning_modules.sharding import shard_model

            dtype = _DTYPES[self.hparams.fsdp_param_dtype] if self.hparams.fsdp_param_dtype else None
            shard_model(self.model, self.device_mesh["data_parallel"], param_dtype=dtype)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of prompt + target (the SFT view of the batch)."""
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            use_cache=False,
        ).logits

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)[:, :-1].float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
        supervised = labels != IGNORE_INDEX
        token_accuracy = (logits.argmax(-1) == labels)[supervised].float().mean()
        return loss, token_accuracy

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not batch:  # every sample of the batch was a skipped bad sample
            return None
        loss, token_accuracy = self._loss(batch)
        size = len(batch["meta"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/token_accuracy", token_accuracy, prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=size)
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        if not batch:
            return
        loss, _ = self._loss(batch)
        self.log(f"{prefix}/loss", loss, batch_size=len(batch["meta"]), sync_dist=True)
        completions = generate_answers(self.model, self.tokenizer, batch, self.hparams.max_new_tokens)
        self.val_accuracy.update(completions, batch["meta"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, prefix: str) -> None:
        results = self.val_accuracy.compute()
        self.val_accuracy.reset()
        for name, value in results.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "accuracy", sync_dist=True)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self.val_accuracy.print_report(results, title=f"{prefix} (epoch {self.current_epoch})")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        scheduler = warmup_cosine(
            optimizer,
            total_steps=self.trainer.estimated_stepping_batches,
            warmup_steps=self.hparams.warmup_steps,
            min_lr_ratio=self.hparams.min_lr_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
