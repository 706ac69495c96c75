"""GRPO on the tiny model: the CLI config, reference KL, LoRA, μ > 1, resume, and failing rewards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger

from cli import main
from datamodules.ct_vqa import CTVQADataModule
from lightning_modules.grpo import GRPOModule
from models.loading import LoRASpec, load_model
from rewards.scoring import RewardError
from rl.config import GenerationArgs, LoggingArgs, LossArgs, RewardArgs
from rl.grouped_forward import completion_logits
from rl.prompt_batch import repeat_prompts
from rl.trajectory import reward_fields
from training.checkpoint_files import load_checkpoint
from training.checkpointing import ResumableCheckpoint as ModelCheckpoint

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "grpo.yaml")


def vowel_reward(completions: list[str], **_) -> list[float]:
    """A reward with spread even for the untrained tiny model (whose answers are never right): share of vowels."""
    return [sum(c.count(v) for v in "aeiou") / max(len(c), 1) for c in completions]


SMALL = dict(
    generation=GenerationArgs(num_generations=4),
    max_new_tokens=8,
    learning_rate=1e-3,
    warmup_steps=0,
    logging=LoggingArgs(log_completions_every_n_steps=1),
    reward_funcs=[vowel_reward],
)


def datamodule(synthetic_root: Path, model_dir: Path, **overrides) -> CTVQADataModule:
    kwargs = dict(data_dir=str(synthetic_root), processor_path=str(model_dir), synthetic=None, num_workers=0)
    return CTVQADataModule(**{**kwargs, "batch_size": 2, "max_samples": 8, **overrides})


def trainer(tmp_path: Path, max_steps: int, **overrides) -> L.Trainer:
    kwargs = dict(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=CSVLogger(tmp_path),
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**kwargs, **overrides})


def broken_reward(completions: list[str], **_) -> list[float]:
    """A reward with a bug, as a user might write one."""
    raise KeyError("answer_text")


def fixed_logps(model: torch.nn.Module, batch: dict, completion_ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(completion_ids)
    with torch.no_grad():
        logits = completion_logits(model, repeat_prompts(batch, 1), completion_ids, mask)
    return torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def test_cli_config_fits_and_logs_what_users_watch(tmp_path, synthetic_root, tiny_model_dir):
    run = tmp_path / "run"
    overlay = {
        "model": {
            "init_args": {
                "model_path": str(tiny_model_dir),
                "generation": {"num_generations": 4},
                "max_new_tokens": 8,
                "micro_batch_size": 3,  # 8 completions → micro-batches of 3, 3, 2
                "loss": {"mask_truncated_completions": False},  # 8 new tokens: most completions are truncated
                "reward_funcs": [
                    "rewards.accuracy.accuracy_reward",
                    "rewards.format.format_reward",
                    {"class_path": "rewards.penalties.LengthPenalty", "init_args": {"buffer": 4}},
                ],
                "rewards": {"reward_weights": [1.0, 0.5, 0.1]},
                "logging": {"log_completions_every_n_steps": 1},
            }
        },
        "data": {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "batch_size": 2},
        "trainer": {
            "max_steps": 2,
            "val_check_interval": 2,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "ckpt"), "save_last": True},
                }
            ],
        },
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    cli = main(["fit", "--config", CONFIG, "--config", str(path)])
    assert cli.trainer.global_step == 2
    assert cli.model.reward_names == ["accuracy_reward", "format_reward", "length_penalty"]
    logged = cli.trainer.logged_metrics
    for key in (
        "train/reward",
        "train/reward_std",
        "train/accuracy",
        "train/format_rate",
        "train/kl",
        "train/policy_loss",
        "train/clip_ratio/low_mean",
        "train/clip_ratio/high_mean",
        "train/clip_ratio/region_mean",
        "train/entropy",
        "train/completions/mean_length",
        "train/completions/max_length",
        "train/completions/clipped_ratio",
        "train/frac_reward_zero_std",
        "train/rewards/length_penalty/mean",
        "val/accuracy",
        "val/format_rate",
        "val/reward",
        "val/rewards/accuracy_reward/mean",
        "val/rewards/length_penalty/mean",
    ):
        assert key in logged, key
    assert torch.isfinite(logged["train/entropy"]) and logged["train/entropy"] > 0
    state = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    # The frozen reference (beta > 0, full fine-tuning) is never saved: only the policy's weights are.
    assert state["state_dict"] and all(k.startswith("model.") for k in state["state_dict"])


def test_reference_is_fixed_and_kl_starts_at_zero(tmp_path, synthetic_root, tiny_model_dir):
    module = GRPOModule(model_path=str(tiny_model_dir), loss=LossArgs(beta=0.1, loss_type="bnpo"), **SMALL)
    data = datamodule(synthetic_root, tiny_model_dir)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    probe = torch.randint(0, 500, (batch["prompt_input_ids"].shape[0], 6))

    first = trainer(tmp_path / "a", 1, callbacks=[], enable_checkpointing=False)
    bnpo = LossArgs(beta=0.1, loss_type="bnpo")
    zero_lr = GRPOModule(model_path=str(tiny_model_dir), loss=bnpo, **{**SMALL, "learning_rate": 0.0})
    first.fit(zero_lr, datamodule=data)
    assert first.logged_metrics["train/kl"].item() == 0.0  # policy == reference: k3 is exactly zero

    fit = trainer(tmp_path / "b", 3, callbacks=[], enable_checkpointing=False)
    fit.fit(module, datamodule=data)
    reference = module.frozen_reference
    before = fixed_logps(load_model(tiny_model_dir).eval(), batch, probe)
    assert torch.equal(fixed_logps(reference, batch, probe), before)  # reference log-probs untouched
    assert not torch.equal(fixed_logps(module.model.eval(), batch, probe), before)  # the policy moved
    assert fit.logged_metrics["train/kl"].item() > 0.0


def test_lora_trains_only_the_adapter_and_its_reference_is_the_base(tmp_path, synthetic_root, tiny_model_dir):
    module = GRPOModule(
        model_path=str(tiny_model_dir), lora=LoRASpec(r=4, alpha=8, dropout=0.0), loss=LossArgs(beta=0.1), **SMALL
    )
    data = datamodule(synthetic_root, tiny_model_dir)
    module.configure_model()
    start = {k: v.clone() for k, v in module.model.named_parameters()}
    trainer(tmp_path, 2, callbacks=[], enable_checkpointing=False).fit(module, datamodule=data)
    assert module.frozen_reference is None  # no second copy: the adapter is switched off instead
    changed = {k for k, v in module.model.named_parameters() if not torch.equal(start[k], v)}
    assert changed and all("lora_" in k for k in changed)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    probe = torch.randint(0, 500, (batch["prompt_input_ids"].shape[0], 6))
    base = fixed_logps(load_model(tiny_model_dir).eval(), batch, probe)
    module.model.eval()
    with module.reference_model() as reference:
        assert torch.equal(fixed_logps(reference, batch, probe), base)
    assert not torch.equal(fixed_logps(module.model, batch, probe), base)


def test_mu_two_reuses_one_rollout_for_two_updates(tmp_path, synthetic_root, tiny_model_dir):
    module = GRPOModule(
        model_path=str(tiny_model_dir),
        loss=LossArgs(
            num_iterations=2,
            loss_type="grpo",
            importance_sampling_level="sequence",
            dynamic_sampling=True,
            mask_truncated_completions=True,
        ),
        **SMALL,
    )
    # 4 batches per epoch × μ = 8 optimizer steps, capped at max_steps = 6: three rollouts, two updates each.
    fit = trainer(tmp_path, 6, max_epochs=1)
    fit.fit(module, datamodule=datamodule(synthetic_root, tiny_model_dir))
    assert fit.global_step == 6
    assert fit.fit_loop.epoch_loop.batch_progress.total.completed == 3
    assert module.optimizer_steps() == 6  # the schedule's horizon is the steps actually taken
    assert fit.lr_scheduler_configs[0].scheduler.last_epoch == 6


def test_settings_are_typed_sections_on_the_module_and_dicts_in_its_hparams():
    """Dicts in hparams: what YAML gives, and what LightningCLI hands back to its parser from a checkpoint."""
    module = GRPOModule(generation={"num_generations": 4}, loss=LossArgs(beta=0.1))
    assert module.generation == GenerationArgs(num_generations=4) and module.loss.beta == 0.1
    assert module.hparams.loss == dataclasses.asdict(LossArgs(beta=0.1)) and module.hparams.rewards["scale_rewards"]
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 3 reward_funcs"):
        GRPOModule(rewards=RewardArgs(reward_weights=[1.0, 0.5]))


def test_repeated_reward_names_stay_apart():
    from rewards.penalties import LengthPenalty

    module = GRPOModule(reward_funcs=[LengthPenalty(), LengthPenalty(buffer=4)])
    assert module.reward_names == ["length_penalty", "length_penalty_2"]


class _Resumed(L.Callback):
    """Records what a resumed run starts from."""

    def on_train_start(self, trainer, module):
        optimizer = trainer.optimizers[0]
        self.adam_steps = {int(s["step"]) for s in optimizer.state.values()}
        self.scheduler_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.weights = {k: v.clone() for k, v in module.model.state_dict().items()}
        self.rng = torch.get_rng_state()


def test_resume_restores_policy_optimizer_scheduler_and_rng(tmp_path, synthetic_root, tiny_model_dir):
    data = datamodule(synthetic_root, tiny_model_dir)
    first = trainer(tmp_path, 2)
    module = GRPOModule(model_path=str(tiny_model_dir), **SMALL)
    first.fit(module, datamodule=data)
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = load_checkpoint(last)

    probe = _Resumed()
    again = trainer(tmp_path, 4, callbacks=[probe, ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_last=True)])
    again.fit(GRPOModule(model_path=str(tiny_model_dir), **SMALL), datamodule=data, ckpt_path=last)
    assert again.global_step == 4
    assert probe.adam_steps == {2} and probe.scheduler_epoch == 2
    for key, value in saved["state_dict"].items():
        assert torch.equal(probe.weights[key.removeprefix("model.")], value), key
    assert torch.equal(probe.rng, saved["rng_states"]["torch"])  # restored by ResumableCheckpoint


def test_a_failing_reward_names_itself_and_the_sample(tmp_path, synthetic_root, tiny_model_dir):
    module = GRPOModule(model_path=str(tiny_model_dir), **{**SMALL, "reward_funcs": [broken_reward]})
    with pytest.raises(RewardError, match=r"broken_reward.*sample 0 \(id"):
        trainer(tmp_path / "raise", 1).fit(module, datamodule=datamodule(synthetic_root, tiny_model_dir))

    from rewards.accuracy import accuracy_reward

    tolerant = GRPOModule(
        model_path=str(tiny_model_dir),
        rewards=RewardArgs(reward_errors="none"),
        **{**SMALL, "reward_funcs": [accuracy_reward, broken_reward]},
    )
    fit = trainer(tmp_path / "none", 1)
    fit.fit(tolerant, datamodule=datamodule(synthetic_root, tiny_model_dir))
    assert fit.logged_metrics["train/rewards/broken_reward/errors"].item() == 8  # 2 prompts × 4 completions


def one_step(tmp_path, synthetic_root, tiny_model_dir, name: str, callbacks=(), **settings):
    """Weights and policy loss after one GRPO step (SMALL settings + ``settings``), same start, data and seed."""
    module = GRPOModule(model_path=str(tiny_model_dir), max_grad_norm=None, **{**SMALL, **settings})
    L.seed_everything(0)
    fit = trainer(tmp_path / name, 1, callbacks=list(callbacks), enable_checkpointing=False)
    fit.fit(module, datamodule=datamodule(synthetic_root, tiny_model_dir, shuffle=False))
    weights = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    return weights, fit.logged_metrics["train/policy_loss"].item()


def assert_same_update(expected, got) -> None:
    """Same loss, and the same weights to within Adam's first step (about lr · sign(grad), lr 1e-3): summation
    order can flip the sign of near-zero gradients, but a lost, doubled or wrong gradient moves a weight by 1e-3."""
    assert got[1] == pytest.approx(expected[1], rel=1e-5, abs=1e-7)
    for key in expected[0]:
        torch.testing.assert_close(got[0][key], expected[0][key], rtol=0, atol=1e-4)


def test_micro_batches_accumulate_to_the_whole_rollout_update(tmp_path, synthetic_root, tiny_model_dir):
    """dapo normalises by the rollout's token count, so 4 micro-batches of 2 give the one-pass update."""
    whole = one_step(tmp_path, synthetic_root, tiny_model_dir, "whole", micro_batch_size=None)
    micro = one_step(tmp_path, synthetic_root, tiny_model_dir, "micro", micro_batch_size=2)
    start = load_model(tiny_model_dir).state_dict()
    assert [k for k in whole[0] if not torch.equal(whole[0][k], start[k])]  # the step moved weights
    assert_same_update(whole, micro)


def test_rewards_see_the_prompt_format_the_data_asked_for(synthetic_root, tiny_model_dir):
    """no_think prompts are scored by the no-think format; the fields carry each prompt's columns per completion."""
    data = datamodule(synthetic_root, tiny_model_dir, prompt_format="no_think")
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = GRPOModule(model_path=str(tiny_model_dir), **SMALL)
    module.configure_model()
    rollout, completions = module.rollout(batch, 4, seed=0)
    fields = reward_fields(batch, rollout, module.hparams.max_new_tokens)
    assert len(completions) == 8 and fields["prompt_format"] == ["no_think"] * 8
    assert fields["answer"] == [m["answer"] for m in batch["meta"] for _ in range(4)]
    assert fields["completion_length"] == rollout.completion_mask.sum(1).tolist()
    assert "<|image_pad|>" not in "".join(completions)  # special tokens never reach the rewards


class CountImages(L.Callback):
    """Records how many images each call of the vision tower gets."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_fit_start(self, trainer, module):
        def count(_module, args, kwargs):  # one row of grid_thw per image
            self.seen.append(int((args[1] if len(args) > 1 else kwargs["grid_thw"]).shape[0]))

        module.model.model.visual.register_forward_pre_hook(count, with_kwargs=True)


def test_gradient_checkpointing_keeps_the_shared_prompt_forward(tmp_path, synthetic_root, tiny_model_dir):
    """Under gradient checkpointing the G completions still share one prompt forward (the vision tower never sees
    more than the batch's own images), and the update equals the one without checkpointing."""
    batch_size = datamodule(synthetic_root, tiny_model_dir).hparams.batch_size
    updates = []
    for checkpointing in (False, True):
        counter = CountImages()
        updates.append(
            one_step(
                tmp_path,
                synthetic_root,
                tiny_model_dir,
                str(checkpointing),
                callbacks=[counter],
                gradient_checkpointing=checkpointing,
            )
        )
        assert counter.seen and max(counter.seen) <= batch_size, counter.seen
    assert_same_update(*updates)


def test_chunked_lm_head_gives_the_same_update(tmp_path, synthetic_root, tiny_model_dir):
    """``logprob_chunk_size``: the logits made a few tokens at a time give the update of the full logits."""
    beta = LossArgs(beta=0.1)
    full = one_step(tmp_path, synthetic_root, tiny_model_dir, "full", loss=beta)
    chunked = one_step(tmp_path, synthetic_root, tiny_model_dir, "chunked", loss=beta, logprob_chunk_size=5)
    assert_same_update(full, chunked)
