"""GRPO settings in sections, as TRL's ``GRPOConfig`` groups them, with TRL's names; each section checked once.

``GRPOModule`` takes one of each (``generation``, ``loss``, ``rewards``, ``logging``, or a dict of its fields);
in YAML they are nested under ``model.init_args`` (``model.init_args.loss.beta``). Settings the policy shares
with SFT (model, LoRA, optimizer, memory) stay flat on the module. ``MOVED_KEYS`` names the new place of each
setting that used to be flat, so ``cli.py`` can refuse an old config with a message instead of jsonargparse's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar, get_args

from common.checkpoint_types import allow_in_checkpoints

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]
Aggregation = Literal["sum_then_normalize", "normalize_then_sum"]
ImportanceSamplingLevel = Literal["token", "sequence"]
RewardErrors = Literal["raise", "none"]


def _check_choice(name: str, value: Any, choices: Any) -> None:
    """Raise ValueError unless ``value`` is one of the ``Literal`` type ``choices`` (jsonargparse checks YAML; this
    checks Python callers too)."""
    if value not in get_args(choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, get_args(choices)))}, not {value!r}")


@dataclass(frozen=True)
class GenerationArgs:
    """How rollouts are sampled (TRL's generation section). The completion budget is ``max_new_tokens`` on the
    module: it is also the validation answers' budget, shared with SFT and the evaluator.

    Raises:
        ValueError: ``num_generations`` < 2, ``num_generations_eval`` < 0.
    """

    num_generations: int = 8
    """G, completions sampled per prompt (≥ 2: advantages compare completions of the same prompt)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; the log-probs of the loss use the same one."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens whose probabilities sum to top_p (1.0 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    num_generations_eval: int = 4
    """Completions sampled per validation prompt for ``val/reward`` and ``val/rewards/<name>/mean`` (TRL's eval
    rewards); 0 = greedy accuracy only."""
    sampling_seed: int | None = None
    """Base seed of the rollout sampler: step k on rank r always draws from seed (sampling_seed, k, r), so a resumed
    run samples what the uninterrupted run would have. Null follows the run's ``seed_everything``. (Not ``seed``:
    the datamodule's ``seed`` is another setting, and Lightning refuses one name with two values.)"""

    def sampling(self, max_new_tokens: int, decoding: Any) -> Any:
        """The decode loop's ``rl.sampling.SamplingConfig`` for these settings, a budget and ``DecodeArgs``."""
        from rl.sampling import SamplingConfig

        return SamplingConfig(max_new_tokens, self.temperature, self.top_p, self.top_k, decoding=decoding)

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: advantages compare completions of the same prompt")
        if self.num_generations_eval < 0:
            raise ValueError(f"num_generations_eval must be >= 0, not {self.num_generations_eval}")


@dataclass(frozen=True)
class LossArgs:
    """The objective and its updates (TRL's loss and training sections), term by term as TRL's ``GRPOTrainer``.

    Raises:
        ValueError: ``num_iterations`` < 1, or a ``loss_type`` / ``importance_sampling_level`` not listed.
    """

    loss_type: LossType = "dapo"
    """grpo, bnpo, dr_grpo or dapo: how per-token terms are aggregated, exactly as TRL does."""
    beta: float = 0.0
    """Weight of the k3 KL to the reference. 0 loads no reference. With LoRA the reference is the same model with
    its adapter disabled; otherwise a frozen copy that is never saved in checkpoints."""
    epsilon: float = 0.2
    """Lower clipping range: ratios below 1 − epsilon are clipped."""
    epsilon_high: float | None = None
    """Upper clipping range: ratios above 1 + epsilon_high are clipped (null: epsilon; DAPO's clip-higher: 0.28)."""
    num_iterations: int = 1
    """μ, optimizer steps per rollout; μ > 1 computes the rollout policy's log-probs once."""
    importance_sampling_level: ImportanceSamplingLevel = "token"
    """``token`` (GRPO) or ``sequence`` (GSPO: one ratio per completion)."""
    mask_truncated_completions: bool = False
    """Completions without an end token count for nothing in the loss."""
    dynamic_sampling: bool = False
    """DAPO's filter: groups whose (weighted) rewards have no spread, whatever ``scale_rewards``, are masked out of
    the loss: their tokens leave bnpo's and dapo's token counts, while grpo and dr_grpo keep TRL's per-sequence
    denominators, as for masked truncated completions."""

    def __post_init__(self) -> None:
        _check_choice("loss_type", self.loss_type, LossType)
        _check_choice("importance_sampling_level", self.importance_sampling_level, ImportanceSamplingLevel)
        if self.num_iterations < 1:
            raise ValueError("num_iterations must be >= 1")

    @property
    def upper_epsilon(self) -> float:
        """The upper clipping range in use: ``epsilon_high``, or ``epsilon`` when that is null."""
        return self.epsilon_high if self.epsilon_high is not None else self.epsilon


@dataclass(frozen=True)
class RewardArgs:
    """How the reward functions' scores become advantages (TRL's reward section). The functions themselves are
    ``reward_funcs`` on the module: callables, not hyperparameters (checkpoints hold data only).

    Raises:
        ValueError: a ``reward_errors`` / ``scale_rewards`` / ``multi_objective_aggregation`` not listed.
    """

    reward_weights: list[float] | None = None
    """One weight per reward function (null: all 1)."""
    reward_errors: RewardErrors = "raise"
    """``raise`` stops on a reward that raises or returns NaN, naming it and the sample; ``none`` turns those values
    into None (not applicable) and logs how many there were (``train/rewards/<name>/errors``); a step where a
    reward failed on every completion, or no completion has any reward, is then skipped as a fault (see
    ``max_consecutive_faults``)."""
    scale_rewards: ScaleRewards = "group"
    """Divide centred rewards by the std of the ``group``, the ``batch`` (all ranks), or ``none``."""
    multi_objective_aggregation: Aggregation = "sum_then_normalize"
    """``sum_then_normalize`` (weighted sum, then group-normalise) or ``normalize_then_sum`` (normalise each reward
    per group, sum, then normalise over the batch)."""

    def __post_init__(self) -> None:
        _check_choice("reward_errors", self.reward_errors, RewardErrors)
        _check_choice("scale_rewards", self.scale_rewards, ScaleRewards)
        _check_choice("multi_objective_aggregation", self.multi_objective_aggregation, Aggregation)

    def weights_for(self, num_funcs: int) -> list[float]:
        """The weight of each of ``num_funcs`` reward functions: ``reward_weights``, or all 1 when null.

        Raises:
            ValueError: ``reward_weights`` does not have ``num_funcs`` entries.
        """
        weights = self.reward_weights if self.reward_weights is not None else [1.0] * num_funcs
        if len(weights) != num_funcs:
            raise ValueError(f"reward_weights has {len(weights)} entries for {num_funcs} reward_funcs")
        return weights


@dataclass(frozen=True)
class LoggingArgs:
    """What is printed besides the logged metrics (TRL's logging section).

    Raises:
        ValueError: a negative value.
    """

    log_completions_every_n_steps: int = 20
    """Print a rich table of sampled completions every this many rollouts (0 = never)."""
    num_completions_to_print: int = 4
    """Rows of that table."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, not {getattr(self, f.name)}")


SECTIONS: dict[str, type] = {
    "generation": GenerationArgs,
    "loss": LossArgs,
    "rewards": RewardArgs,
    "logging": LoggingArgs,
}

# Every setting that was a flat GRPOModule argument before the sections: old name → its place under init_args.
MOVED_KEYS: dict[str, str] = {f.name: f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)}

# Data, not code: a checkpoint that holds them loads under torch.load(weights_only=True). (GRPOModule's own hparams
# hold them as dicts: LightningCLI hands a checkpoint's hparams back to its parser, which takes dicts.)
allow_in_checkpoints(*SECTIONS.values())

Args = TypeVar("Args")


def as_args(value: Args | dict[str, Any] | None, cls: type[Args]) -> Args:
    """``value`` as a ``cls`` section: itself, built from a dict (LightningCLI may hand one over), or the defaults.

    Raises:
        ValueError: from the section's checks; TypeError: a key the section does not have.
    """
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)
    if not isinstance(value, cls):
        raise TypeError(f"expected {cls.__name__} or a dict of its fields, not {type(value).__name__}")
    return value
