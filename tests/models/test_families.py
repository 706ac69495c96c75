"""Every VLM family on its tiny offline model: the decode loop equals ``generate``; for the training families the
grouped forward equals repeated rows (values and gradients), SFT and GRPO steps run through the CLI with LoRA,
export + reload gives the trained logits, and a 2-process FSDP2 step runs. Loading refuses what would be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText

from cli import main
from datamodules.collate import full_inputs, prompt_inputs
from datamodules.ct_vqa import CTVQADataModule
from datamodules.processor import load_processor
from models.families import GENERIC, family_of
from models.loading import ModelLoadError, load_model
from models.tiny.builders import TINY_BUILDERS, TRAINING_FAMILIES
from rl.sampling import SamplingConfig, end_token_ids, sample_completions
from tests.lightning_modules.test_answer_only_grpo import one_step_trainer
from tests.lightning_modules.test_fsdp import FSDP2_STRATEGY, _fit
from tests.rl.test_grouped_forward import _training_model_and_rollout, check_grouped_against_full_rows

ROOT = Path(__file__).resolve().parents[2]
NEW_TRAINING_FAMILIES = [f for f in TRAINING_FAMILIES if f != "qwen2_5_vl"]  # the default is tested everywhere


def batch_of(synthetic_root: Path, model_dir: Path, size: int = 3) -> dict:
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(model_dir), synthetic=None, batch_size=size, num_workers=0
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("family", sorted(TINY_BUILDERS))
def test_greedy_decode_equals_generate(family, family_model_dir, synthetic_root):
    """Our decode loop (one prefill, the family's positions and cache) gives ``model.generate``'s greedy tokens."""
    model_dir = family_model_dir(family)
    model = load_model(model_dir).eval()
    assert family_of(model).name == family.removesuffix("_moe") or family_of(model) is GENERIC
    tokenizer = load_processor(model_dir).tokenizer
    batch = batch_of(synthetic_root, model_dir)
    eos = end_token_ids(model, tokenizer)
    greedy = SamplingConfig(max_new_tokens=8, do_sample=False)
    ours = sample_completions(model, batch, 2, greedy, eos, tokenizer.pad_token_id).completion_ids
    assert torch.equal(ours[0::2], ours[1::2])  # the prompt's repeated cache gives each copy the same answer
    prompt = batch["prompt_input_ids"]
    inputs = prompt_inputs(batch)
    reference = model.generate(
        **inputs, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
    )[:, prompt.shape[1] :]
    assert torch.equal(ours[0::2][:, : reference.shape[1]], reference)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("family", NEW_TRAINING_FAMILIES)
def test_grouped_logps_and_gradients_equal_repeated_rows(family, checkpointing, family_model_dir, synthetic_root):
    """GRPO's training forward on a micro-batch that cuts a group, with and without gradient checkpointing: the
    log-probs and gradients of full rows, each prompt's image through the vision tower once."""
    model_dir = family_model_dir(family)
    batch = batch_of(synthetic_root, model_dir)
    model, rollout = _training_model_and_rollout(model_dir, batch, checkpointing, max_new_tokens=6, seed=0)
    check_grouped_against_full_rows(model, batch, rollout, slice(3, 10))
    if family.startswith("qwen3_5"):  # two tokens: the completion forward continues the prompt by one token
        model, rollout = _training_model_and_rollout(model_dir, batch, checkpointing, max_new_tokens=2, seed=0)
        check_grouped_against_full_rows(model, batch, rollout, slice(3, 10))


def _overlay(tmp_path: Path, name: str, config: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("family", NEW_TRAINING_FAMILIES)
def test_sft_then_grpo_with_lora_and_export(family, family_model_dir, synthetic_root, tmp_path):
    """One SFT step with LoRA through the CLI, its export reloads with the trained logits, then one GRPO step from
    the export with LoRA (the adapter-disabled model is the reference) moves the adapter only."""
    model_dir = family_model_dir(family)
    data = {"data_dir": str(synthetic_root), "synthetic": None, "num_workers": 0, "batch_size": 2, "max_samples": 8}
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    sft_run = tmp_path / "sft"
    sft = {
        "model": {"init_args": {"model_path": str(model_dir), "lora": lora, "learning_rate": 1e-2}},
        "data": data,
        "trainer": one_step_trainer(sft_run),
    }
    cfg = _overlay(tmp_path, "sft", sft)
    cli = main(["fit", "--config", "configs/sft.yaml", "--config", cfg])
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    wrapped = [n for n, _ in cli.model.model.named_modules() if n.endswith("lora_A")]
    assert wrapped and not any(family_of(model_dir_config(model_dir)).is_vision(n) for n in wrapped)
    assert any(".self_attn.q_proj." in n for n in wrapped)
    if family.startswith("qwen3_5"):  # the linear-attention layers' projections too
        assert any(".linear_attn.in_proj_qkv." in n for n in wrapped)
    ckpt = sft_run / "ckpt" / "last.ckpt"
    out = tmp_path / "exported"
    main(["export", "--config", "configs/sft.yaml", "--config", cfg, "--ckpt_path", str(ckpt), "--out_dir", str(out)])
    batch = batch_of(synthetic_root, out, size=2)
    cli.model.eval()
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    with torch.no_grad():
        expected = cli.model(batch)
        got = reloaded(**full_inputs(batch))
    torch.testing.assert_close(got.logits, expected, atol=1e-5, rtol=1e-5)

    grpo_run = tmp_path / "grpo"
    grpo = {
        "model": {
            "init_args": {
                "model_path": str(out),
                "lora": lora,
                "generation": {"num_generations": 2},
                "max_new_tokens": 4,
                "loss": {"beta": 0.1, "mask_truncated_completions": False},
                "reward_funcs": ["tests.lightning_modules.test_grpo.vowel_reward"],
                "rewards": {"reward_weights": None},
                "logging": {"log_completions_every_n_steps": 0},
            }
        },
        "data": data,
        "trainer": one_step_trainer(grpo_run),
    }
    cli = main(["fit", "--config", "configs/grpo.yaml", "--config", _overlay(tmp_path, "grpo", grpo)])
    assert cli.trainer.global_step == 1
    trained = {n for n, p in cli.model.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)


def model_dir_config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


@pytest.mark.parametrize("family", NEW_TRAINING_FAMILIES)
def test_two_process_fsdp2_sft_step(family, family_model_dir, synthetic_root, tmp_path):
    """Sharded per decoder layer and vision block (the family's units) on 2 gloo processes: it trains."""
    losses = _fit(tmp_path, "fsdp", synthetic_root, family_model_dir(family), 2, devices=2, strategy=FSDP2_STRATEGY)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_weights_that_do_not_fit_the_class_are_refused(family_model_dir, tmp_path):
    """A Qwen3-VL directory whose config says Qwen2.5-VL loads only partly: refused, naming the directory."""
    wrong = tmp_path / "qwen3-as-qwen2.5"
    shutil.copytree(family_model_dir("qwen3_vl"), wrong)
    config = json.loads((wrong / "config.json").read_text())
    source = json.loads((family_model_dir("qwen2_5_vl") / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**source, "vocab_size": config.get("vocab_size")}))
    with pytest.raises(ModelLoadError, match=rf"{wrong}: its weights do not fit Qwen2_5_VL.*unexpected keys"):
        load_model(wrong)


def test_a_model_with_its_own_code_needs_trust(family_model_dir, tmp_path):
    shaky = tmp_path / "remote"
    shutil.copytree(family_model_dir("qwen2_5_vl"), shaky)
    config = json.loads((shaky / "config.json").read_text())
    (shaky / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "x.Config"}}))
    with pytest.raises(ModelLoadError, match="trust_remote_code: true"):
        load_model(shaky)


def test_an_evaluation_only_family_is_refused_for_training(tmp_path, family_model_dir):
    """A model type without an adapter can be evaluated, not trained: one clear error before any weight loads."""
    assert load_model(family_model_dir("qwen2_vl"), for_training=True) is not None
    other = tmp_path / "other"
    shutil.copytree(family_model_dir("qwen2_5_vl"), other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gemma3"}))
    with pytest.raises(ModelLoadError, match="'gemma3' can be evaluated but not trained here; SFT and GRPO support"):
        load_model(other, for_training=True)


EVAL_ONLY_FAMILIES = [f for f in sorted(TINY_BUILDERS) if f not in TRAINING_FAMILIES]


@pytest.mark.parametrize("family", [*EVAL_ONLY_FAMILIES, "qwen3_vl"])
def test_cli_test_evaluates_the_family_and_writes_a_report(family, family_model_dir, synthetic_root, tmp_path):
    """``cli.py test --config configs/eval.yaml --model.init_args.model_path DIR`` on any family: the same questions,
    answer parsing and metrics, p(yes) on presence questions, a report."""
    from tests.evaluation.test_evaluate import EVAL, overlay

    cfg = overlay(tmp_path, synthetic_root, family_model_dir(family), name=family)
    cli = main(["test", "--config", EVAL, "--config", cfg])
    run = tmp_path / "eval" / family
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and (run / "report.md").is_file()
    assert (
        type(cli.model.model).__name__
        == type(AutoModelForImageTextToText.from_config(model_dir_config(family_model_dir(family)))).__name__
    )
    presence = [r for r in rows if r["question_type"] == "presence"]
    assert presence and all(0.0 <= r["p_yes"] <= 1.0 for r in presence)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 12)


def test_cli_refuses_a_partly_loaded_model_in_one_line(family_model_dir, synthetic_root, tmp_path, capsys):
    """The issue's case: a Qwen3-VL directory presented as Qwen2.5-VL was once evaluated with random weights. Now
    ``cli.py test`` exits 2 with one line naming the directory; a text-only model and a model with its own code
    (not trusted) are refused likewise, before its processor's code could run. (In process: ``cli.run`` is what
    ``python cli.py`` runs; tests/test_cli.py covers the subprocess.)"""
    from cli import run

    wrong = tmp_path / "qwen3-as-qwen2.5"
    shutil.copytree(family_model_dir("qwen3_vl"), wrong)
    (wrong / "config.json").write_text((family_model_dir("qwen2_5_vl") / "config.json").read_text())
    text_only = tmp_path / "text-only"
    shutil.copytree(family_model_dir("qwen2_5_vl"), text_only)
    config = json.loads((text_only / "config.json").read_text())
    (text_only / "config.json").write_text(json.dumps({**config["text_config"], "model_type": "qwen2"}))
    remote = tmp_path / "remote"
    shutil.copytree(family_model_dir("qwen2_5_vl"), remote)
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "x.Config"}}))
    data = ["--data.init_args.data_dir", str(synthetic_root), "--data.init_args.synthetic", "null"]
    cases = (
        (wrong, "its weights do not fit Qwen2_5_VL"),
        (text_only, "cannot load it"),
        (remote, "set model.init_args.trust_remote_code: true only if you trust its source"),
    )
    for directory, reason in cases:
        args = ["test", "--config", str(ROOT / "configs" / "eval.yaml"), "--model.init_args.model_path", str(directory)]
        capsys.readouterr()
        assert run([*args, *data]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(directory) in errors[0] and reason in errors[0], errors


def test_two_process_fsdp2_evaluation_of_an_evaluation_only_family(family_model_dir, synthetic_root, tmp_path):
    """SmolVLM sharded by its own ``_no_split_modules`` (vision attention blocks) on 2 gloo processes: every
    question answered once, as in one process."""
    from tests.evaluation.test_evaluate import overlay, run_on_two_processes

    run_on_two_processes(
        tmp_path, overlay(tmp_path, synthetic_root, family_model_dir("smolvlm"), name="smolvlm"), {"max_new_tokens": 8}
    )
    rows = [json.loads(line) for line in (tmp_path / "eval" / "smolvlm" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 7
