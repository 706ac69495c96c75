"""What the SFT and GRPO stages share: loading (and sharding) the policy, generating validation answers, AdamW."""

from __future__ import annotations

import itertools
from typing import Any

import lightning as L
import torch

from datamodules.ctrate import CTRATE_LABELS
from datamodules.processor import load_processor
from datamodules.vqa_records import QUESTION_TYPES
from evaluation.answers import first_token_id, generate_answers, prediction_rows, print_results
from evaluation.diagnosis import DiagnosisMetrics
from evaluation.metrics import VQAAccuracy
from models.attention import set_sdpa_backends
from models.embedded import ensure_model_dir
from models.loading import load_model
from rl.decode_steps import DecodeArgs
from rl.sampling import end_token_ids, special_token_ids
from rl.static_decode import StaticDecodeSteps
from training.schedules import warmup_cosine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PolicyModule(L.LightningModule):
    """Base of the training stages and the evaluator. Subclasses call ``save_hyperparameters()`` with at least:
    model_path, build_embedded_if_missing, lora, attn_implementation, sdpa_backends, fsdp_param_dtype,
    max_new_tokens, decoding; training stages also freeze_vision, gradient_checkpointing, learning_rate, weight_decay,
    warmup_steps, min_lr_ratio.
    """

    def __init__(self) -> None:
        super().__init__()
        self.model: torch.nn.Module | None = None
        self.val_accuracy = VQAAccuracy(QUESTION_TYPES)
        self.test_metrics = DiagnosisMetrics(QUESTION_TYPES, CTRATE_LABELS)
        self.test_rows: list[dict[str, Any]] = []
        # Filled at the end of `test`: {"metrics": …, "predictions": [rows of all ranks]}; read by
        # evaluation.callbacks.EvaluationReport to write the run folder.
        self.test_results: dict[str, Any] | None = None
        # Static decode steps built by this module's decode loops, kept between calls: each shape is allocated
        # (and on a GPU compiled and captured) once, not once per batch (rl/static_decode.py).
        self.static_steps = StaticDecodeSteps()

    def prepare_data(self) -> None:
        """Build the embedded tiny model if it is configured and missing (rank 0, before any setup)."""
        ensure_model_dir(self.hparams.model_path, self.hparams.build_embedded_if_missing)

    def load_policy(self, path: str, reference: bool = False) -> torch.nn.Module:
        """A model from ``path`` with this module's LoRA / freezing / attention settings, sharded under FSDP2.

        ``reference=True``: a frozen, adapter-free copy in eval mode (GRPO's KL anchor under full fine-tuning).
        """
        model = load_model(
            path,
            lora=None if reference else self.hparams.lora,
            freeze_vision=self.hparams.get("freeze_vision", True),  # absent: an evaluator, which never trains
            attn_implementation=self.hparams.attn_implementation,
            gradient_checkpointing=self.hparams.get("gradient_checkpointing", False) and not reference,
            trust_remote_code=self.hparams.get("trust_remote_code", False),  # the evaluator's opt-in
            for_training="learning_rate" in self.hparams,
        )
        if reference:
            model.requires_grad_(False).eval()
        if getattr(self, "device_mesh", None) is not None:
            from models.sharding import shard_model

            dtype = DTYPES[self.hparams.fsdp_param_dtype] if self.hparams.fsdp_param_dtype else None
            shard_model(model, self.device_mesh["data_parallel"], param_dtype=dtype)
        return model

    def configure_model(self) -> None:
        """Load (and, under ModelParallelStrategy, shard) the model; called once on every rank."""
        if self.model is not None:
            return
        path = str(ensure_model_dir(self.hparams.model_path, build_embedded_if_missing=False))
        set_sdpa_backends(self.hparams.get("sdpa_backends"))
        self.tokenizer = load_processor(path, self.hparams.get("trust_remote_code", False)).tokenizer
        self.model = self.load_policy(path)
        # Once per model, not per batch: the tokens that end an answer and the ones never to generate.
        self.end_tokens = end_token_ids(self.model, self.tokenizer)
        self.suppressed_tokens = special_token_ids(self.tokenizer, keep=self.end_tokens)
        self.yes_no_ids = (first_token_id(self.tokenizer, "yes"), first_token_id(self.tokenizer, "no"))
        self.model.train()  # from_pretrained returns eval mode; Lightning toggles modes per loop from here

    def batch_usable(self, batch: dict[str, Any]) -> bool:
        """False for a batch whose samples were all skipped as bad; an error when other ranks wait on this one.

        Under several processes every rank must run the same collectives (sharded forwards, metric syncs), so
        a rank cannot silently skip a step; the skip report names the bad files to fix or drop.
        """
        if batch:
            return True
        if self.trainer.world_size > 1:
            raise RuntimeError(
                f"rank {self.global_rank}: every sample of this batch was skipped as bad (skip_bad_samples), and "
                "the other ranks would wait for it forever. Fix or remove the bad samples named in the log, or "
                "use a larger batch_size."
            )
        return False

    def eval_loss(self, batch: dict[str, Any], prefix: str) -> None:
        """Hook for a stage-specific loss on validation/test batches (SFT logs its cross-entropy)."""

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Log the batch's image-token budget: image tokens per sample, median and maximum (candidate views
        multiply it; ``datamodules/views.py``)."""
        tokens = [m["image_tokens"] for m in batch.get("meta", []) if m.get("image_tokens") is not None]
        if tokens:
            t = torch.tensor(tokens, dtype=torch.float32)
            self.log("data/image_tokens_p50", t.median(), batch_size=len(tokens))
            self.log("data/image_tokens_max", t.max(), batch_size=len(tokens), reduce_fx="max")

    def greedy_answers(self, batch: dict[str, Any]) -> list[str]:
        """Greedy completions of the batch's prompts with this module's budget, stop and suppressed tokens."""
        return generate_answers(
            self.model,
            self.tokenizer,
            batch,
            self.hparams.max_new_tokens,
            eos_token_ids=self.end_tokens,
            suppress_token_ids=self.suppressed_tokens,
            decoding=self.decoding,
            static_steps=self.static_steps,
        )

    @property
    def decoding(self) -> DecodeArgs:
        """How this module's decode loops cache and capture their steps (the ``decoding`` argument)."""
        return DecodeArgs(**(self.hparams.get("decoding") or {}))  # a dict (asdict) in hparams; absent: defaults

    def answer_batch(self, batch: dict[str, Any], with_p_yes: bool) -> list[dict[str, Any]]:
        """Greedy answers for the batch, scored as prediction rows (``evaluation.metrics.prediction_row``)."""
        completions = self.greedy_answers(batch)
        return prediction_rows(self.model, self.tokenizer, batch, completions, self.yes_no_ids if with_p_yes else None)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self.batch_usable(batch):
            return
        self.eval_loss(batch, "val")
        self.val_accuracy.update(self.answer_batch(batch, with_p_yes=False))

    def on_validation_epoch_end(self) -> None:
        results = self.val_accuracy.compute()
        self.val_accuracy.reset()
        for name, value in results.items():
            self.log(f"val/{name}", value, prog_bar=name == "accuracy")
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            print_results(results, QUESTION_TYPES, title=f"val (epoch {self.current_epoch}, step {self.global_step})")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Full evaluation: answers, p(yes) on presence questions, every diagnosis metric, rows kept for the report."""
        if not self.batch_usable(batch):
            return
        self.eval_loss(batch, "test")
        rows = self.answer_batch(batch, with_p_yes=True)
        self.test_metrics.update(rows)
        self.test_rows.extend(r for r in rows if not r["padding"])

    def on_test_epoch_start(self) -> None:
        self.test_rows, self.test_results = [], None

    def on_test_epoch_end(self) -> None:
        results = self.test_metrics.compute()
        self.test_metrics.reset()
        for name, value in results.items():
            if isinstance(value, float):
                self.log(f"test/{name}", value, prog_bar=name == "accuracy")
        self.test_results = {"metrics": results, "predictions": gather_rows(self.test_rows)}
        if self.trainer.is_global_zero:
            print_results(results, QUESTION_TYPES, title="test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Prediction rows (question, reasoning, answer, truth, correct, p(yes)) for ``cli.py predict``."""
        if not self.batch_usable(batch):
            return []
        return [r for r in self.answer_batch(batch, with_p_yes=True) if not r["padding"]]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the count of skipped (faulty) steps across a resume: a run of faults spans the restart."""
        if getattr(self, "faults", None) is not None:
            checkpoint["faults"] = self.faults.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if getattr(self, "faults", None) is not None and "faults" in checkpoint:
            self.faults.load_state_dict(checkpoint["faults"])

    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run (the horizon of the learning-rate schedule)."""
        return self.trainer.estimated_stepping_batches

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        scheduler = warmup_cosine(
            optimizer,
            total_steps=self.optimizer_steps(),
            warmup_steps=self.hparams.warmup_steps,
            min_lr_ratio=self.hparams.min_lr_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows on every rank, in dataset order of the distributed split (ids are unique)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(rows)
    gathered: list[list[dict[str, Any]] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, rows)
    # DistributedSampler deals index i to rank i % world: interleave back to dataset order.
    out = [row for group in itertools.zip_longest(*gathered) for row in group if row is not None]
    seen: set[str] = set()
    return [r for r in out if not (r["id"] in seen or seen.add(r["id"]))]
