"""GRPO: G sampled completions per prompt, group-relative advantages, clipped policy loss, KL to a reference.

One ``training_step`` is one rollout, in torchtune's phases: ``generate_trajectory`` (sample, score, advantages,
fixed log-probs), ``grpo_step`` (``num_iterations`` (μ) optimizer steps on that trajectory, each accumulated over
micro-batches of ``micro_batch_size`` completions), ``log_metrics``. The parts live in ``rl/``: settings
(``config``), advantages and loss (TRL's definitions), cross-rank bookkeeping (``distributed``), metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any, Literal

import torch

from datamodules.seeding import resolve_seed
from lightning_modules.policy import PolicyModule
from models.attention import SdpaBackend
from models.embedded import ensure_model_dir
from models.loading import LoRASpec
from rewards.accuracy import accuracy_reward
from rewards.format import format_reward
from rewards.scoring import reward_name, score_completions
from rewards.validity import validity_reward
from rl.advantages import global_group_advantages
from rl.config import SECTIONS, GenerationArgs, LoggingArgs, LossArgs, RewardArgs, as_args
from rl.decode_steps import DecodeArgs
from rl.distributed import global_token_count, lockstep_passes, reward_fault
from rl.logprobs import completion_logps, fixed_logps
from rl.metrics import SHOWN, ValidationRewards, completions_table, print_table, reduce_fx, step_metrics, unique_names
from rl.sampling import Rollout, eval_mode, sample_completions
from rl.trajectory import GRPOStats, GRPOTrajectory, loss_mask, micro_batches, reward_fields
from rl.vllm_rollout import VLLMRollout
from training.faults import FaultCounter, all_finite, gradients_finite

RewardFunc = Callable[..., Sequence[float | None]]


class GRPOModule(PolicyModule):
    """GRPO on CT-VQA, starting from a Hugging Face model directory (normally the SFT export).

    GRPO's own settings are TRL ``GRPOConfig``'s, in its sections (``rl/config.py`` documents and checks them):
    ``generation``, ``loss``, ``rewards``, ``logging``; in YAML ``model.init_args.loss.beta``, on the module
    ``self.loss.beta`` (hparams and checkpoints hold them as dicts). What the policy shares with SFT stays flat:

    Args:
        model_path, build_embedded_if_missing, lora, freeze_vision, attn_implementation, sdpa_backends,
            gradient_checkpointing, fsdp_param_dtype, max_consecutive_faults: as in SFT (a rollout without usable
            rewards is a fault too).
        learning_rate, weight_decay, warmup_steps, min_lr_ratio, max_grad_norm: AdamW with linear warmup + cosine
            decay over optimizer steps (μ per rollout); clipping by global norm (null: none).
        max_new_tokens: completion budget of the rollouts (TRL's max_completion_length) and validation answers.
        decoding: static or dynamic cache and CUDA-graph capture of the rollouts' and answers' decode loop: as in SFT.
        reward_funcs: callables ``(completions, **fields) -> list[float | None]`` (``rl.trajectory.reward_fields``);
            import paths or class_path + init_args in YAML. Default: accuracy, format, validity. Not in hparams.
        micro_batch_size: completions per forward/backward (gradient accumulation); null = the whole rollout.
        logprob_chunk_size: tokens per LM-head chunk in the log-prob forwards (``rl/logprobs.py``); null = all at
            once. Not under FSDP2, where the head's weight is sharded outside the model's forward.
        rollout_engine: null = our decode loop (``rl.sampling.sample_completions``), or ``rl.vllm_rollout.VLLMRollout``
            (needs vLLM and ``data.keep_images``): only the sampled tokens come from it, the loss is the same.

    Raises:
        ValueError: a section's checks (``rl/config.py``), or ``reward_weights`` not one per reward function.
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
        max_new_tokens: int = 64,
        decoding: DecodeArgs = DecodeArgs(),  # noqa: B008 - frozen: a shared default is safe
        generation: GenerationArgs = GenerationArgs(),  # noqa: B008 - frozen: a shared default is safe
        loss: LossArgs = LossArgs(),  # noqa: B008
        reward_funcs: list[RewardFunc] | None = None,
        rewards: RewardArgs = RewardArgs(),  # noqa: B008
        logging: LoggingArgs = LoggingArgs(),  # noqa: B008
        micro_batch_size: int | None = None,
        logprob_chunk_size: int | None = None,
        gradient_checkpointing: bool = False,
        fsdp_param_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str = "sdpa",
        sdpa_backends: list[SdpaBackend] | None = None,
        max_consecutive_faults: int = 10,
        rollout_engine: VLLMRollout | None = None,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):  # LightningCLI may hand a dataclass over as a plain dict
            lora = LoRASpec(**lora)
        generation, loss = as_args(generation, GenerationArgs), as_args(loss, LossArgs)
        rewards, logging = as_args(rewards, RewardArgs), as_args(logging, LoggingArgs)
        self.reward_funcs = list(reward_funcs) if reward_funcs else [accuracy_reward, format_reward, validity_reward]
        self.reward_names = unique_names([reward_name(f) for f in self.reward_funcs])
        weights = rewards.weights_for(len(self.reward_funcs))
        # Callables are not checkpoint material (resume loads with weights_only). Only __init__ arguments go into
        # hparams, the sections as dicts: LightningCLI hands a checkpoint's hparams back to its parser.
        self.save_hyperparameters(ignore=["reward_funcs", "rollout_engine"])
        self.generation, self.loss, self.rewards, self.logging = generation, loss, rewards, logging
        sections = {name: asdict(getattr(self, name)) for name in SECTIONS}
        self.hparams.update(lora=lora, decoding=asdict(as_args(decoding, DecodeArgs)), **sections)
        self.rollout_engine = rollout_engine
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)
        self.sampling = generation.sampling(max_new_tokens, self.decoding)
        self.automatic_optimization = False  # one rollout feeds μ optimizer steps
        self.val_rewards = ValidationRewards(self.reward_names)
        # Kept in a list so nn.Module does not register it: never in state_dict, checkpoints or the optimizer.
        self._reference_holder: list[torch.nn.Module] = []
        self._generator: torch.Generator | None = None
        self.faults = FaultCounter(max_consecutive_faults)

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
        if self.loss.beta == 0.0 or self.hparams.lora is not None or self.frozen_reference is not None:
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
        trainer, mu = self.trainer, self.loss.num_iterations
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

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Greedy accuracy per question type (as in SFT) and, like TRL's eval, the rewards of sampled completions.

        The validation draws are seeded by batch index only, so two validations of different weights sample
        with the same randomness: the change in ``val/rewards/*`` is the model's, not the dice's.
        """
        super().validation_step(batch, batch_idx)
        g = self.generation.num_generations_eval
        if not self.batch_usable(batch) or not g:
            return
        rollout, completions = self.rollout(batch, g, self.rollout_seed(batch_idx, stream=1))
        fields = reward_fields(batch, rollout, self.hparams.max_new_tokens)
        rewards_per_func, _ = score_completions(self.reward_funcs, completions, fields, on_error="none")
        padding = torch.tensor([bool(m.get("padding")) for m in batch["meta"]], device=self.device)
        weights = self.reward_weights.to(self.device)
        self.val_rewards.update(rewards_per_func.to(self.device), weights, padding.repeat_interleave(g))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.generation.num_generations_eval:
            return
        for key, value in self.val_rewards.compute_and_reset().items():
            self.log(key, value, prog_bar=key == "val/reward", sync_dist=False)

    def rollout(self, batch: dict[str, Any], num_generations: int, seed: int) -> tuple[Rollout, list[str]]:
        """Sample completions (eval mode: no dropout) from a sampler seeded with ``seed``; decode them without
        special tokens."""
        if self.rollout_engine is not None:
            rollout = self.rollout_engine.sample(self, batch, num_generations, self.sampling, seed)
        else:
            if self._generator is None or self._generator.device != self.device:
                self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(seed)
            with eval_mode(self.model):
                ids = (self.end_tokens, self.tokenizer.pad_token_id, self.suppressed_tokens, self._generator)
                rollout = sample_completions(self.model, batch, num_generations, self.sampling, *ids, self.static_steps)
        return rollout, self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)

    def rollout_seed(self, step: int, stream: int = 0) -> int:
        """Seed of rollout ``step`` on this rank: from (sampling_seed, stream, step, rank), not carried state."""
        base = resolve_seed(self.generation.sampling_seed)
        return ((base * 1_000_003 + stream) * 1_000_033 + step) * 1_009 + self.global_rank

    def generate_trajectory(self, batch: dict[str, Any]) -> GRPOTrajectory:
        """Sample and score this step's rollout and prepare everything its updates need, on all ranks in step."""
        hp, world_size = self.hparams, self.trainer.world_size
        rollout, texts = self.rollout(batch, self.generation.num_generations, self.rollout_seed(self.global_step))
        fields = reward_fields(batch, rollout, hp.max_new_tokens)
        scores, errors = score_completions(self.reward_funcs, texts, fields, on_error=self.rewards.reward_errors)
        scores, weights, rw = scores.to(self.device), self.reward_weights.to(self.device), self.rewards
        args = (self.generation.num_generations, rw.scale_rewards, rw.multi_objective_aggregation, world_size)
        stats, adv, no_spread = global_group_advantages(scores, weights, *args)
        mask = loss_mask(rollout, no_spread, self.loss.mask_truncated_completions, self.loss.dynamic_sampling)
        items = global_token_count(mask, world_size)
        chunks = micro_batches(rollout.completion_ids.size(0), hp.micro_batch_size)
        padding = lockstep_passes(len(chunks), world_size, self.device)
        fault = reward_fault(self.reward_names, errors, len(texts), stats.rewards, world_size, self.device)
        trajectory = GRPOTrajectory(
            batch, rollout, texts, fields, scores, errors, stats, adv, mask, items, chunks, padding, fault
        )
        if fault is None:
            fixed = (batch, rollout, chunks, padding, self.generation.temperature, hp.logprob_chunk_size)
            if self.loss.num_iterations > 1:
                trajectory.old_logps = fixed_logps(self.model, *fixed)
            if self.loss.beta != 0.0:
                with self.reference_model() as reference:
                    trajectory.ref_logps = fixed_logps(reference, *fixed)
        return trajectory

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self.batch_usable(batch):
            return
        rollout_index = self.global_step // self.loss.num_iterations
        trajectory = self.generate_trajectory(batch)
        stats = self.grpo_step(trajectory)
        self.log_metrics(trajectory, stats, rollout_index)

    def grpo_step(self, trajectory: GRPOTrajectory) -> GRPOStats:
        """μ optimizer steps on one trajectory, each accumulated over its micro-batches; returns their statistics.

        A step with a non-finite loss or gradient, and every step of a trajectory with a ``fault``, is skipped:
        the optimizer steps without gradients (no update, but the step and the schedule advance as in a good
        run, so the data, the rollout seeds and ``max_steps`` keep their meaning).
        """
        hp, t, world_size = self.hparams, trajectory, self.trainer.world_size
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        passes = [(rows, 1) for rows in t.micro_batches] + [(slice(0, 1), 0)] * t.lockstep_passes
        stats = GRPOStats()
        for _ in range(self.loss.num_iterations):
            step_loss = torch.zeros((), device=self.device)
            if t.fault is not None:
                self.faults.record(t.fault, self.global_step)
                stats.loss.append(step_loss)
                optimizer.zero_grad(set_to_none=True)
                optimizer.step()
                scheduler.step()
                continue
            for rows, weight in passes:
                logps, entropy = completion_logps(
                    self.model, t.batch, t.rollout, rows, self.generation.temperature, hp.logprob_chunk_size, True
                )
                terms, mask = t.micro_batch_loss(logps, rows, weight, self.loss, hp.max_new_tokens, world_size)
                self.manual_backward(terms.loss)
                if weight:
                    step_loss += terms.loss.detach()
                    stats.add_pass(terms, entropy, mask)
            stats.loss.append(step_loss)
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
        return stats

    def log_metrics(self, trajectory: GRPOTrajectory, stats: GRPOStats, rollout_index: int) -> None:
        """Per-step metrics with TRL's names under ``train/`` (``rl.metrics.step_metrics``), synced over ranks; every
        ``log_completions_every_n_steps`` rollouts (``rollout_index``), rank 0's completions table."""
        lr = self.optimizers().param_groups[0]["lr"]
        count_errors = self.rewards.reward_errors == "none"
        values = step_metrics(trajectory, stats, self.reward_names, count_errors, lr, self.faults.total)
        n = len(trajectory.completions)
        for key, value in values.items():
            value, fx = value.float().to(self.device), reduce_fx(key)
            self.log(f"train/{key}", value, prog_bar=key in SHOWN, batch_size=n, sync_dist=True, reduce_fx=fx)
        every = self.logging.log_completions_every_n_steps
        if every and self.trainer.is_global_zero and rollout_index % every == 0:
            title = f"GRPO completions, step {self.global_step}"
            print_table(completions_table(trajectory, self.reward_names, self.logging.num_completions_to_print, title))
