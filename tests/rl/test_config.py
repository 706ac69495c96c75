"""GRPO's settings sections: TRL's names and defaults, checked once, safe in checkpoints, and the map of moved keys."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rl.config import MOVED_KEYS, SECTIONS, GenerationArgs, LoggingArgs, LossArgs, RewardArgs, as_args


def test_defaults_are_trls():
    loss = LossArgs()
    assert dataclasses.astuple(loss)[:5] == ("dapo", 0.0, 0.2, None, 1)  # loss_type, beta, epsilon, …
    assert loss.upper_epsilon == 0.2 and LossArgs(epsilon_high=0.28).upper_epsilon == 0.28
    generation = GenerationArgs()
    assert (generation.num_generations, generation.temperature, generation.top_p, generation.top_k) == (8, 1.0, 1.0, 0)
    assert RewardArgs().scale_rewards == "group" and RewardArgs().multi_objective_aggregation == "sum_then_normalize"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GenerationArgs(num_generations=1), "num_generations must be >= 2"),
        (lambda: GenerationArgs(num_generations_eval=-1), "num_generations_eval must be >= 0"),
        (lambda: LossArgs(loss_type="ppo"), "loss_type must be one of 'grpo', 'bnpo', 'dr_grpo', 'dapo', not 'ppo'"),
        (lambda: LossArgs(importance_sampling_level="group"), "importance_sampling_level must be one of"),
        (lambda: LossArgs(num_iterations=0), "num_iterations must be >= 1"),
        (lambda: RewardArgs(reward_errors="ignore"), "reward_errors must be one of 'raise', 'none'"),
        (lambda: RewardArgs(scale_rewards="std"), "scale_rewards must be one of"),
        (lambda: RewardArgs(multi_objective_aggregation="sum"), "multi_objective_aggregation must be one of"),
        (lambda: LoggingArgs(num_completions_to_print=-1), "num_completions_to_print must be >= 0"),
    ],
)
def test_a_bad_value_is_refused_when_its_section_is_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_reward_weights_are_one_per_function():
    assert RewardArgs().weights_for(3) == [1.0, 1.0, 1.0]
    assert RewardArgs(reward_weights=[1.0, 0.5]).weights_for(2) == [1.0, 0.5]
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 3 reward_funcs"):
        RewardArgs(reward_weights=[1.0, 0.5]).weights_for(3)


def test_a_section_comes_from_itself_a_dict_or_nothing():
    assert as_args(None, LossArgs) == LossArgs()
    assert as_args({"beta": 0.04}, LossArgs) == LossArgs(beta=0.04)
    same = LossArgs(beta=0.1)
    assert as_args(same, LossArgs) is same
    with pytest.raises(TypeError, match="expected LossArgs or a dict"):
        as_args(GenerationArgs(), LossArgs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        same.beta = 0.2  # a shared default instance can never change under another module


def test_sections_load_from_a_checkpoint_as_data(tmp_path):
    """Saved in checkpoints' hyperparameters: torch.load(weights_only=True) must accept them (resume, --ckpt_path)."""
    hparams = {
        "generation": GenerationArgs(num_generations=4, temperature=0.7, sampling_seed=3),
        "loss": LossArgs(beta=0.04, epsilon_high=0.28),
        "rewards": RewardArgs(reward_weights=[1.0, 0.5, 0.5], reward_errors="none"),
        "logging": LoggingArgs(log_completions_every_n_steps=0),
    }
    torch.save({"hyper_parameters": hparams}, tmp_path / "h.ckpt")
    assert torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"] == hparams


def test_every_moved_key_names_its_section():
    fields = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert MOVED_KEYS == {key: f"{section}.{key}" for key, section in fields.items()}
    assert MOVED_KEYS["temperature"] == "generation.temperature" and MOVED_KEYS["beta"] == "loss.beta"
