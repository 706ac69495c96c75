"""GRPO: G sampled completions per prompt, group-relative advantages, clipped policy loss, KL to a reference.

One ``training_step`` is one rollout: sample, score, compute advantages, then ``num_iterations`` (μ) optimizer
steps on that rollout, each accumulated over micro-batches of ``micro_batch_size`` completions. The math lives in
``grpo_loss.py`` (TRL's definitions), the sampling in ``rollout.py``; this module wires them to Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table
from torchmetrics import MeanMetric

from datamodules.seeding import resolve_seed
from lightning_modules.policy import PolicyModule
from models.attention import SdpaBackend
from models.embedded import ensure_model_dir
from models.loading import LoRASpec
from rewards.accuracy import accuracy_reward
from rewards.format import format_reward
from rewards.parsing import is_correct
from rewards.scoring import reward_name, score_completions
from rewards.validity import validity_reward
from rl.loss import (
    Advantages,
    Aggregation,
    ImportanceSamplingLevel,
    LossType,
    ScaleRewards,
    group_advantages,
    masked_mean,
    nanstd,
    policy_loss,
    token_logps_and_entropy,
    weighted_reward,
)
from rl.grouped_forward import chunked_head_logps, grouped_completion_logits, grouped_forward
from rl.sampling import Rollout, SamplingConfig, eval_mode, sample_completions
from rl.vllm_rollout import VLLMRollout
from training.faults import FaultCounter, all_finite, gradients_finite

RewardFunc = Callable[..., Sequence[float | None]]


class GRPOModule(PolicyModule):
    """GRPO on CT-VQA, starting from a Hugging Face model directory (normally the SFT export).

    Names and defaults follow TRL's ``GRPOConfig`` where the concept exists there.

    Args:
        model_path, build_embedded_if_missing, lora, freeze_vision, attn_implementation, sdpa_backends,
            gradient_checkpointing, fsdp_param_dtype: the policy, as in the SFT stage. Log-prob forwards run each
            prompt and image once for its G completions (``rollout.grouped_completion_logits``), with or without
            gradient checkpointing.
        learning_rate, weight_decay, warmup_steps, min_lr_ratio: AdamW with linear warmup + cosine decay,
            over optimizer steps (μ per rollout).
        max_grad_norm: gradient clipping by global norm; null disables it.
        num_generations: G, completions sampled per prompt.
        max_new_tokens: completion budget (TRL's max_completion_length); also the validation answers' budget.
        temperature, top_p, top_k: sampling of the rollouts (top_k 0 = off). Log-probs use the same temperature.
        reward_funcs: reward callables ``(completions, **fields) -> list[float | None]``; import paths or
            class_path + init_args in YAML. Default: accuracy, format, validity.
        reward_weights: one weight per reward function (default all 1).
        reward_errors: ``raise`` stops on a reward that raises or returns NaN, naming it and the sample;
            ``none`` turns those values into None (not applicable) and logs how many there were
            (``train/rewards/<name>/errors``); a step where a reward failed on every completion, or no completion
            has any reward, is then skipped as a fault (see ``max_consecutive_faults``).
        scale_rewards: divide centred rewards by the std of the ``group``, the ``batch``, or ``none``.
        multi_objective_aggregation: ``sum_then_normalize`` (weighted sum, then group-normalise) or
            ``normalize_then_sum`` (normalise each reward per group, sum, then normalise over the batch).
        loss_type: grpo, bnpo, dr_grpo or dapo, aggregated exactly as TRL does.
        beta: weight of the k3 KL to the reference. 0 loads no reference. With LoRA the reference is the same
            model with its adapter disabled; otherwise a frozen copy that is never saved in checkpoints.
        epsilon, epsilon_high: clipping range [1 − epsilon, 1 + epsilon_high] (epsilon_high defaults to epsilon).
        num_iterations: μ, optimizer steps per rollout; μ > 1 computes the rollout policy's log-probs once.
        importance_sampling_level: ``token`` (GRPO) or ``sequence`` (GSPO).
        mask_truncated_completions: completions without an end token count for nothing in the loss.
        dynamic_sampling: DAPO's filter; groups whose (weighted) rewards have no spread, whatever
            ``scale_rewards``, are masked out of the loss: their tokens leave bnpo's and dapo's token counts,
            while grpo and dr_grpo keep TRL's per-sequence denominators, as for masked truncated completions.
        micro_batch_size: completions per forward/backward (gradient accumulation); null = the whole rollout.
        logprob_chunk_size: tokens per LM-head chunk in the log-prob forwards: the (tokens × vocabulary) logits
            are made a chunk at a time and freed (made again in backward) instead of all at once, as TRL's tiled
            head; the same log-probs. Null = all at once. With a real 151k vocabulary the logits are most of a
            micro-batch's activation memory (8 completions × 256 tokens: 1.2 GB in fp32, twice with their
            log-softmax). Not under FSDP2, where the head's weight is sharded outside the model's forward.
        num_generations_eval: completions sampled per validation prompt for ``val/reward`` and
            ``val/rewards/<name>/mean`` (TRL's eval rewards); 0 = greedy accuracy only.
        log_completions_every_n_steps, num_completions_to_print: a rich table of sampled completions.
        sampling_seed: base seed of the rollout sampler; step k on rank r always draws from seed
            (sampling_seed, k, r), so a resumed run samples what the uninterrupted run would have. (Not ``seed``:
            the datamodule's ``seed`` is another setting, and Lightning refuses one name with two values.)
            Null follows the run's ``seed_everything``.
        max_consecutive_faults: an optimizer step whose loss or gradient is not finite, or a rollout without usable
            rewards, is skipped (no update), logged and counted (``train/skipped_steps``); this many in a row stop
            the run (0: never stop).
        rollout_engine: what samples the completions; null = our decode loop (``rollout.sample_completions``),
            or ``rl.vllm_rollout.VLLMRollout`` when vLLM is installed (needs ``data.keep_images``).
            Only the sampled tokens come from the engine: log-probs, loss and updates are the same.
    """

    def __init__(
        self,
        model_path: str = "artifacts/sft-model",
        build_embedded_if_missing: bool = False,
        lora: LoRASpec | None = None,
        freeze_vision: bool = False,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        min_lr_ratio: float = 1.0,
        max_grad_norm: float | None = 1.0,
        num_generations: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        reward_funcs: list[RewardFunc] | None = None,
        reward_weights: list[float] | None = None,
        reward_errors: Literal["raise", "none"] = "raise",
        scale_rewards: ScaleRewards = "group",
        multi_objective_aggregation: Aggregation = "sum_then_normalize",
        loss_type: LossType = "dapo",
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        num_iterations: int = 1,
        importance_sampling_level: ImportanceSamplingLevel = "token",
        mask_truncated_completions: bool = False,
        dynamic_sampling: bool = False,
        micro_batch_size: int | None = None,
        logprob_chunk_size: int | None = None,
        num_generations_eval: int = 4,
        log_completions_every_n_steps: int = 20,
        num_completions_to_print: int = 4,
        sampling_seed: int | None = None,
        gradient_checkpointing: bool = False,
        fsdp_param_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str = "sdpa",
        sdpa_backends: list[SdpaBackend] | None = None,
        max_consecutive_faults: int = 10,
        rollout_engine: VLLMRollout | None = None,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):  # LightningCLI may hand the dataclass over as a plain dict
            lora = LoRASpec(**lora)
        self.reward_funcs = list(reward_funcs) if reward_funcs else [accuracy_reward, format_reward, validity_reward]
        self.reward_names = _unique([reward_name(f) for f in self.reward_funcs])
        weights = reward_weights if reward_weights is not None else [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(weights)} entries for {len(self.reward_funcs)} reward_funcs")
        if num_generations < 2:
            raise ValueError("num_generations must be >= 2: advantages compare completions of the same prompt")
        if num_iterations < 1:
            raise ValueError("num_iterations must be >= 1")
        # Callables are not checkpoint material (resume loads with weights_only). Only __init__ arguments go into
        # hparams: LightningCLI hands a checkpoint's hparams back to __init__ when given its path.
        self.save_hyperparameters(ignore=["reward_funcs", "rollout_engine"])
        self.rollout_engine = rollout_engine
        self.hparams.lora = lora
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)
        self.sampling = SamplingConfig(max_new_tokens, temperature, top_p, top_k, do_sample=True)
        self.automatic_optimization = False  # one rollout feeds μ optimizer steps
        # NaN-ignoring means (a None reward is not applicable), reduced across ranks by torchmetrics.
        self.val_rewards = torch.nn.ModuleDict(
            {name: MeanMetric(nan_strategy="ignore") for name in ["reward", *self.reward_names]}
        )
        # Kept in a list so nn.Module does not register it: never in state_dict, checkpoints or the optimizer.
        self._reference_holder: list[torch.nn.Module] = []
        self._generator: torch.Generator | None = None
        self.faults = FaultCounter(max_consecutive_faults)

    # ----------------------------------------------------------------------------------------------- set-up
    @property
    def frozen_reference(self) -> torch.nn.Module | None:
        """The frozen reference copy (full fine-tuning with beta > 0), else None."""
        return self._reference_holder[0] if self._reference_holder else None

    def setup(self, stage: str) -> None:
        """Start the rollout engine (vLLM) before the model and optimizer take their share of the GPU."""
        if stage == "fit" and self.rollout_engine is not None:
            self.rollout_engine.setup(self)

    def on_fit_start(self) -> None:
        """Load the frozen reference (full fine-tuning with beta > 0) only for fitting, in the policy's dtype."""
        if self.hparams.get("logprob_chunk_size") and getattr(self, "device_mesh", None) is not None:
            raise ValueError(
                "logprob_chunk_size works on unsharded models only: under FSDP2 the LM head's weight is sharded "
                "outside the model's forward. Use micro_batch_size to bound the logits' memory instead."
            )
        if self.hparams.beta == 0.0 or self.hparams.lora is not None or self.frozen_reference is not None:
            return
        path = str(ensure_model_dir(self.hparams.model_path, build_embedded_if_missing=False))
        # Straight onto this process's device, as Lightning loads the policy in configure_model: loaded on the CPU
        # and moved, every weight would pass through host memory. (Sharded: fully_shard places the shards.)
        sharded = getattr(self, "device_mesh", None) is not None
        with nullcontext() if sharded else torch.device(self.device):
            reference = self.load_policy(path, reference=True)
        dtype = next(self.model.parameters()).dtype  # e.g. bf16-true converts only registered modules
        self._reference_holder = [reference.to(device=self.device, dtype=dtype)]

    def optimizer_steps(self) -> int:
        """Optimizer steps of the run: μ per rollout, capped by ``trainer.max_steps`` (which counts them)."""
        trainer, mu = self.trainer, self.hparams.num_iterations
        rollouts = trainer.estimated_stepping_batches  # min(max_steps, batches × epochs); sets up the data
        if trainer.max_steps == -1:
            return int(rollouts * mu)
        if trainer.max_epochs is None or trainer.max_epochs == -1:
            return trainer.max_steps
        return int(min(trainer.max_steps, trainer.num_training_batches * trainer.max_epochs * mu))

    @contextmanager
    def reference_model(self):
        """The reference policy: the frozen copy, or (LoRA) this model with its adapter disabled."""
        if self.frozen_reference is not None:
            yield self.frozen_reference
        else:
            with self.model.disable_adapter():
                yield self.model

    # ------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Greedy accuracy per question type (as in SFT) and, like TRL's eval, the rewards of sampled completions.

        The validation draws are seeded by batch index only, so two validations of different weights sample
        with the same randomness: the change in ``val/rewards/*`` is the model's, not the dice's.
        """
        super().validation_step(batch, batch_idx)
        g = self.hparams.num_generations_eval
        if not self.batch_usable(batch) or not g:
            return
        rollout, completions = self.rollout(batch, g, self._rollout_seed(batch_idx, stream=1))
        fields = self.reward_fields(batch, rollout)
        rewards_per_func, _ = score_completions(self.reward_funcs, completions, fields, on_error="none")
        rewards_per_func = rewards_per_func.to(self.device)
        # Repeats that even out a distributed split score NaN, which the MeanMetrics ignore.
        padding = torch.tensor([bool(m.get("padding")) for m in batch["meta"]], device=self.device)
        rewards_per_func[padding.repeat_interleave(g)] = float("nan")
        self.val_rewards["reward"].update(weighted_reward(rewards_per_func, self.reward_weights.to(self.device)))
        for i, name in enumerate(self.reward_names):
            self.val_rewards[name].update(rewards_per_func[:, i])

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.hparams.num_generations_eval:
            return
        for name, metric in self.val_rewards.items():
            key = "val/reward" if name == "reward" else f"val/rewards/{name}/mean"
            self.log(key, metric.compute(), prog_bar=name == "reward", sync_dist=False)
            metric.reset()

    # ---------------------------------------------------------------------------------------------- rollout
    def rollout(self, batch: dict[str, Any], num_generations: int, seed: int) -> tuple[Rollout, list[str]]:
        """Sample completions (eval mode: no dropout) from a sampler seeded with ``seed``; decode them without
        special tokens."""
        if self.rollout_engine is not None:
            rollout = self.rollout_engine.sample(self, batch, num_generations, self.sampling, seed)
            return rollout, self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        with eval_mode(self.model):
            rollout = sample_completions(
                self.model,
                batch,
                num_generations,
                self.sampling,
                eos_token_ids=self.end_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                suppress_token_ids=self.suppressed_tokens,
                generator=self._generator,
            )
        return rollout, self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)

    def _rollout_seed(self, step: int, stream: int = 0) -> int:
        """Seed of rollout ``step`` on this rank: from (sampling_seed, stream, step, rank), not carried state."""
        return (
            (resolve_seed(self.hparams.sampling_seed) * 1_000_003 + stream) * 1_000_033 + step
        ) * 1_009 + self.global_rank

    def reward_fields(self, batch: dict[str, Any], rollout: Rollout) -> dict[str, list]:
        """The dataset columns of each completion's prompt, plus its token count and budget."""
        g = rollout.num_generations
        meta = [m for m in batch["meta"] for _ in range(g)]
        fields = {key: [m.get(key) for m in meta] for key in meta[0]}
        fields["completion_length"] = rollout.completion_mask.sum(1).tolist()
        fields["max_completion_length"] = [self.hparams.max_new_tokens] * len(meta)
        return fields

    def advantages(self, rewards_per_func: torch.Tensor) -> tuple[Advantages, torch.Tensor, torch.Tensor]:
        """Group advantages computed on the global batch (all ranks, for the batch std); returns the global
        statistics and this rank's slice of the advantages and of the groups-without-spread flags."""
        n = rewards_per_func.size(0)
        everyone, mine = rewards_per_func, slice(None)
        if self.trainer.world_size > 1:
            # Ranks that skipped bad samples hold fewer groups: pad with unscorable (NaN) groups, which stay out
            # of every mean and std, so all ranks gather tensors of one shape.
            most = torch.tensor(n, device=self.device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            padded = rewards_per_func.new_full((int(most), rewards_per_func.size(1)), float("nan"))
            padded[:n] = rewards_per_func
            everyone = self.all_gather(padded).reshape(-1, rewards_per_func.size(1))
            mine = slice(self.global_rank * int(most), self.global_rank * int(most) + n)
        stats = group_advantages(
            everyone,
            self.reward_weights.to(rewards_per_func.device),
            self.hparams.num_generations,
            self.hparams.scale_rewards,
            self.hparams.multi_objective_aggregation,
        )
        return stats, stats.advantages[mine], stats.group_without_spread[mine]

    def _reward_fault(self, stats: Advantages, errors: dict[str, int], n: int) -> str | None:
        """Why this rollout's rewards cannot drive an update (None when they can), decided on all ranks alike:
        a reward function failed on every completion (the weighted sum would silently lose a term), or no
        completion has any reward at all."""
        failed = torch.tensor([float(errors.get(name, 0) >= n) for name in self.reward_names], device=self.device)
        if self.trainer.world_size > 1:
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        broken = [name for name, f in zip(self.reward_names, failed.tolist(), strict=True) if f]
        if broken:
            return f"reward {', '.join(broken)} raised or returned NaN on every completion"
        if bool(torch.isnan(stats.rewards).all()):
            return "no completion has a usable reward"
        return None

    # ------------------------------------------------------------------------------------------------ loss
    def _logps(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        rollout: Rollout,
        rows: slice,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids, mask, temperature = rollout.completion_ids, rollout.completion_mask, self.hparams.temperature
        chunk = self.hparams.get("logprob_chunk_size")
        if not chunk:
            logits = grouped_completion_logits(model, batch, ids, mask, rollout.num_generations, rows)
            return token_logps_and_entropy(logits, ids[rows], temperature, with_entropy=with_entropy)
        first_logits, hidden = grouped_forward(model, batch, ids, mask, rollout.num_generations, rows, hidden=True)
        first = token_logps_and_entropy(first_logits, ids[rows][:, :1], temperature, with_entropy=with_entropy)
        if hidden is None:
            return first
        head = model.get_output_embeddings()
        rest = chunked_head_logps(hidden, head, ids[rows][:, 1:], temperature, with_entropy, chunk)
        logps = torch.cat([first[0], rest[0]], dim=1)
        return logps, torch.cat([first[1], rest[1]], dim=1) if with_entropy else None

    @torch.no_grad()
    def _fixed_logps(
        self, model: torch.nn.Module, batch: dict[str, Any], rollout: Rollout, chunks: list[slice], padding: int
    ) -> torch.Tensor:
        """Log-probs that stay fixed over the μ updates (rollout policy, reference), in eval mode."""
        with eval_mode(model):
            logps = torch.cat([self._logps(model, batch, rollout, rows)[0] for rows in chunks])
            for _ in range(padding):  # discarded: only keeps this rank's sharded forwards in step with the others
                self._logps(model, batch, rollout, slice(0, 1))
        return logps

    def _chunks(self, n: int) -> tuple[list[slice], int]:
        """Micro-batches of ``micro_batch_size`` completions, and how many zero-weight passes this rank adds so
        that every rank runs as many sharded forward/backward passes as the busiest one."""
        size = self.hparams.micro_batch_size or n
        chunks = [slice(i, min(i + size, n)) for i in range(0, n, size)]
        if self.trainer.world_size == 1:
            return chunks, 0
        count = torch.tensor(len(chunks), device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return chunks, int(count) - len(chunks)

    def _loss_mask(self, rollout: Rollout, no_spread: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Which completion tokens count in the loss, and how many do on all ranks (dapo's normaliser)."""
        mask = rollout.completion_mask.clone()
        if self.hparams.mask_truncated_completions:
            mask = mask * (~rollout.is_truncated).unsqueeze(1)
        if self.hparams.dynamic_sampling:
            mask = mask * (~no_spread).unsqueeze(1)
        num_items = mask.sum().float()
        if self.trainer.world_size > 1:
            dist.all_reduce(num_items)
        return mask, float(num_items)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self.batch_usable(batch):
            return
        hp = self.hparams
        rollout_index = self.global_step // hp.num_iterations
        rollout, completions = self.rollout(batch, hp.num_generations, self._rollout_seed(self.global_step))
        fields = self.reward_fields(batch, rollout)
        rewards_per_func, errors = score_completions(self.reward_funcs, completions, fields, on_error=hp.reward_errors)
        rewards_per_func = rewards_per_func.to(self.device)
        stats, advantages, no_spread = self.advantages(rewards_per_func)
        loss_mask, num_items = self._loss_mask(rollout, no_spread)

        chunks, padding = self._chunks(rollout.completion_ids.size(0))
        reward_fault = self._reward_fault(stats, errors, len(completions))
        old_logps = None
        if hp.num_iterations > 1 and reward_fault is None:
            old_logps = self._fixed_logps(self.model, batch, rollout, chunks, padding)
        ref_logps = None
        if hp.beta != 0.0 and reward_fault is None:
            with self.reference_model() as reference:
                ref_logps = self._fixed_logps(reference, batch, rollout, chunks, padding)

        metrics = self._update(
            batch, rollout, advantages, loss_mask, num_items, old_logps, ref_logps, chunks, padding, reward_fault
        )
        self._log_step(rollout, completions, fields, stats, errors, metrics)
        every = hp.log_completions_every_n_steps
        if every and self.trainer.is_global_zero and rollout_index % every == 0:
            self._print_completions(batch, completions, rewards_per_func, advantages)

    def _update(
        self,
        batch: dict[str, Any],
        rollout: Rollout,
        advantages: torch.Tensor,
        loss_mask: torch.Tensor,
        num_items: float,
        old_logps: torch.Tensor | None,
        ref_logps: torch.Tensor | None,
        chunks: list[slice],
        padding: int,
        reward_fault: str | None = None,
    ) -> dict[str, list[torch.Tensor]]:
        """μ optimizer steps on one rollout, each accumulated over the micro-batches; returns their metrics.

        A step with a non-finite loss or gradient, and every step of a rollout with ``reward_fault``, is skipped:
        the optimizer steps without gradients (no update, but the step and the schedule advance as in a good
        run, so the data, the rollout seeds and ``max_steps`` keep their meaning).
        """
        hp = self.hparams
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        passes = [(rows, 1) for rows in chunks] + [(slice(0, 1), 0)] * padding
        metrics: dict[str, list[torch.Tensor]] = {k: [] for k in ("loss", "kl", "low", "high", "entropy")}
        for _ in range(hp.num_iterations):
            step_loss = torch.zeros((), device=self.device)
            if reward_fault is not None:
                self.faults.record(reward_fault, self.global_step)
                metrics["loss"].append(step_loss)
                optimizer.zero_grad(set_to_none=True)
                optimizer.step()
                scheduler.step()
                continue
            for rows, weight in passes:
                logps, entropy = self._logps(self.model, batch, rollout, rows, with_entropy=True)
                mask = loss_mask[rows] * weight
                terms = policy_loss(
                    logps,
                    None if old_logps is None else old_logps[rows],
                    advantages[rows],
                    mask,
                    loss_type=hp.loss_type,
                    epsilon_low=hp.epsilon,
                    epsilon_high=hp.epsilon_high if hp.epsilon_high is not None else hp.epsilon,
                    beta=hp.beta,
                    ref_logps=None if ref_logps is None else ref_logps[rows],
                    importance_sampling_level=hp.importance_sampling_level,
                    max_completion_length=hp.max_new_tokens,
                    num_micro_batches=len(chunks),
                    num_items_in_batch=num_items,
                    world_size=self.trainer.world_size,
                )
                self.manual_backward(terms.loss)
                if not weight:
                    continue
                step_loss += terms.loss.detach()
                metrics["low"].append(masked_mean(terms.low_clipped, mask))
                metrics["high"].append(masked_mean(terms.high_clipped, mask))
                metrics["entropy"].append(masked_mean(entropy, mask))
                if terms.per_token_kl is not None:
                    metrics["kl"].append(masked_mean(terms.per_token_kl, mask))
            metrics["loss"].append(step_loss)
            fault = None
            if not all_finite([step_loss], self.device):
                fault = f"a non-finite loss ({step_loss.item()})"
            elif not gradients_finite(self.model, self.device):
                fault = "a non-finite gradient"
            if self.faults.record(fault, self.global_step):
                optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without gradients untouched
            if hp.max_grad_norm:
                self.clip_gradients(optimizer, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        return metrics

    # --------------------------------------------------------------------------------------------- logging
    def _log_step(
        self,
        rollout: Rollout,
        completions: list[str],
        fields: dict[str, list],
        stats: Advantages,
        errors: dict[str, int],
        metrics: dict[str, list[torch.Tensor]],
    ) -> None:
        """Per-step metrics with TRL's names, under ``train/``; accuracy and format rate whatever the rewards."""
        n = len(completions)
        correct = [
            is_correct(c, a, o) for c, a, o in zip(completions, fields["answer"], fields["options"], strict=True)
        ]
        formatted = format_reward(completions, prompt_format=fields.get("prompt_format"))
        lengths = rollout.completion_mask.sum(1).float()
        values = {
            "reward": torch.nanmean(stats.rewards),
            "reward_std": nanstd(stats.rewards),
            "accuracy": torch.tensor(sum(correct) / n),
            "format_rate": torch.tensor(sum(formatted) / n),
            "frac_reward_zero_std": stats.is_std_zero.float().mean(),
            "policy_loss": torch.stack(metrics["loss"]).mean(),
            "clip_ratio/low_mean": _mean(metrics["low"]),
            "clip_ratio/high_mean": _mean(metrics["high"]),
            "clip_ratio/region_mean": _mean(metrics["low"]) + _mean(metrics["high"]),
            "entropy": _mean(metrics["entropy"]),
            "completions/mean_length": lengths.mean(),
            "completions/min_length": lengths.min(),
            "completions/max_length": lengths.max(),
            "completions/clipped_ratio": rollout.is_truncated.float().mean(),
            "lr": torch.tensor(self.optimizers().param_groups[0]["lr"]),
            "skipped_steps": torch.tensor(float(self.faults.total)),
        }
        if metrics["kl"]:
            values["kl"] = _mean(metrics["kl"])
        # From every rank's rewards (``stats`` holds the global batch): a function that applies to no completion of
        # one rank would make that rank's mean NaN, and the synced mean of [NaN, x] is NaN. The global nanmean is
        # the count-weighted mean over the ranks that have values, the same on every rank.
        for i, name in enumerate(self.reward_names):
            values[f"rewards/{name}/mean"] = torch.nanmean(stats.rewards_per_func[:, i])
            values[f"rewards/{name}/std"] = nanstd(stats.rewards_per_func[:, i])
            if self.hparams.reward_errors == "none":  # every step on every rank: logging is a collective
                values[f"rewards/{name}/errors"] = torch.tensor(float(errors.get(name, 0)))
        shown = {"reward", "accuracy", "format_rate", "kl"}
        reduce = {"completions/min_length": "min", "completions/max_length": "max"}
        for key, value in values.items():
            fx = "sum" if key.endswith("/errors") else reduce.get(key, "mean")
            self.log(
                f"train/{key}",
                value.float().to(self.device),
                prog_bar=key in shown,
                batch_size=n,
                sync_dist=True,
                reduce_fx=fx,
            )

    def _print_completions(
        self, batch: dict[str, Any], completions: list[str], rewards_per_func: torch.Tensor, advantages: torch.Tensor
    ) -> None:
        g = self.hparams.num_generations
        table = Table(title=f"GRPO completions, step {self.global_step}", show_lines=True)
        table.add_column("question", overflow="fold", ratio=2)
        table.add_column("answer", overflow="fold", ratio=1)
        table.add_column("completion", overflow="fold", ratio=5)
        for column in (*self.reward_names, "advantage"):
            table.add_column(column, justify="right")
        for i in range(min(self.hparams.num_completions_to_print, len(completions))):
            meta = batch["meta"][i // g]
            table.add_row(
                meta["question"],
                meta["answer"],
                completions[i],
                *[_fmt(v) for v in rewards_per_func[i].tolist()],
                f"{advantages[i].item():+.2f}",
            )
        console = Console()
        console.width = max(console.width, 160)  # logs to files/pipes default to 80 columns
        console.print(table)


def _unique(names: list[str]) -> list[str]:
    """Reward names for logs and metrics; a repeated name (two LengthPenalty instances) gets _2, _3, …"""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean() if values else torch.tensor(0.0)


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"
