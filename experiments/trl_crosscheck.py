"""Cross-check of our GRPO against TRL 1.16's ``GRPOTrainer``: same start, data, rewards and settings; our evaluator.

    pip install -r benchmarks/requirements.txt   # trl, datasets
    python -m experiments.trl_crosscheck --config configs/grpo.yaml [--config overlay.yaml ...] \
        --model_path DIR --out_dir runs/trl_crosscheck [--eval_config configs/eval.yaml] \
        [--eval_data_overrides '{max_samples: 40}'] [--evaluation NAME '{data overrides}' ...] [--eval_start]

The GRPO config is parsed by ``cli.py``'s own LightningCLI (configs merged in order, ``--model_path`` last), so
every default is ours. The training rows are our datamodule's train split, rendered by our ``CTVQADataset``
(identical prompt ids and images), in the order our train loader gives them: each rollout's prompts are the ones
our run sees at that step, unless an epoch of ours ends in a short batch (TRL only makes full batches; from there
on TRL's rollouts take the next prompts in order, and ``summary.json`` counts the rollouts that match). Our reward
functions run unchanged through ``rewards.scoring.score_completions`` with the same fields and error policy.
The policy is loaded by our ``load_model`` and trained with our AdamW and warmup-cosine schedule (handed to
TRL as ``optimizers``: HF's warmup starts at 0 and keeps biases and norms out of weight decay; ours does not).
TRL's result is saved as a Hugging Face model directory at ``<out_dir>/model`` and evaluated with
``cli.py test --config <eval_config>`` on the GRPO config's data settings (plus ``--eval_data_overrides``), in
the run folder ``<out_dir>/eval/trl_grpo`` (``--eval_start``: also ``<out_dir>/eval/start``) that
``python -m evaluation.compare`` reads beside our arms' run folders; ``--evaluation NAME DATA`` adds test sets
(e.g. the shifted scanner), in ``<out_dir>/eval-NAME/`` as ``experiments.replicate`` lays them out. TRL exports
its last step; our arms export their best validation checkpoint: compare like with like (say so where not).

How each of our settings reaches TRL (ours → ``GRPOConfig`` / ``GRPOTrainer``):

- model_path, lora, freeze_vision, attn_implementation, gradient_checkpointing → the policy loaded by our
  ``load_model``, passed as ``model`` (TRL loads its reference from the same directory; with LoRA it disables the
  adapter instead, as we do); gradient_checkpointing also → gradient_checkpointing
- learning_rate, weight_decay, warmup_steps, min_lr_ratio → ``optimizers=(AdamW, warmup_cosine)``, ours
  (learning_rate, weight_decay also set, for TRL's logs)
- max_grad_norm (null: none) → max_grad_norm (0.0: none)
Our settings are named as in TRL; ours group them in sections (``rl/config.py``: generation, loss, rewards, logging).

- generation.num_generations → num_generations; max_new_tokens → max_completion_length
- generation.temperature, top_p, top_k (0: off) → the same, with min_p None and repetition_penalty 1.0
- our sampler's suppressed special tokens → ``generation_kwargs["suppress_tokens"]``
- reward_funcs, rewards.reward_weights, rewards.reward_errors → reward_funcs (``trl_reward``), reward_weights;
  errors handled by our ``score_completions`` inside each wrapper
- rewards.scale_rewards, rewards.multi_objective_aggregation, and loss.loss_type, beta, epsilon, epsilon_high,
  num_iterations, importance_sampling_level, mask_truncated_completions → the same names
- data.batch_size P (prompts per rollout) and micro_batch_size m (null: P × G) → per_device_train_batch_size m,
  gradient_accumulation_steps = steps_per_generation = P × G / m (one rollout per optimizer step, μ = 1)
- trainer.max_steps (optimizer steps) → max_steps; trainer.accelerator, precision → use_cpu, bf16, fp16
  (``benchmarks.common.hf_device_arguments``); seed_everything → seed
- sdpa_backends → ``set_sdpa_backends`` before training (a process-wide setting)
- logprob_chunk_size, generation.num_generations_eval, generation.sampling_seed, logging.*,
  max_consecutive_faults → nothing: memory, validation and logging only, TRL draws from its own random stream
  and has no fault skipping
- loss.dynamic_sampling, rollout_engine, fsdp_param_dtype, several processes, max_steps not a multiple of μ, a
  micro_batch_size that does not divide P × G → refused (ValueError): TRL cannot express them here

Not like-for-like by design: the random streams of sampling, TRL shuffling a rollout before splitting it into
micro-batches (the same sum of gradients), and TRL's fused LM head (the same log-probs up to rounding).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from benchmarks import common
from experiments.replicate import deep_merge, write_yaml

# Settings a cross-check cannot reproduce in TRL: (hparam, under its section, value that is fine, why).
REFUSED = [
    ("loss.dynamic_sampling", False, "TRL has no DAPO dynamic-sampling filter"),
    ("rollout_engine", None, "TRL's vLLM integration is configured differently; cross-check our own sampler"),
    ("fsdp_param_dtype", None, "the cross-check runs in one process"),
]


@contextmanager
def _own_argv() -> Iterator[None]:
    """LightningCLI given ``args`` warns (dumping them) when ``sys.argv`` holds this script's arguments too."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def load_stage(paths: list[str], model_path: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Our GRPO module, datamodule and trainer as ``cli.py fit`` builds them (nothing run), and the merged config.

    Raises ValueError for a config whose model is not ``GRPOModule``.
    """

    from cli import main as cli_main
    from lightning_modules.grpo import GRPOModule

    config: dict[str, Any] = {}
    for path in paths:
        layer = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(layer.get("data"), str):  # a data group file (configs/data/), named from the config's folder
            layer["data"] = yaml.safe_load((Path(path).parent / layer["data"]).read_text()) or {}
        config = deep_merge(config, layer)
    config = deep_merge(config, {"model": {"init_args": {"model_path": model_path}}})
    with _own_argv():
        cli = cli_main(config, run=False, save_config_callback=None)
    if not isinstance(cli.model, GRPOModule):
        raise ValueError(f"{paths}: model is {type(cli.model).__name__}; the cross-check needs a GRPOModule config")
    config["seed_everything"] = cli.config["seed_everything"]  # as LightningCLI resolved it (true: a drawn seed)
    return cli.model, cli.datamodule, cli.trainer, config


def grpo_settings(module: Any, datamodule: Any, trainer: Any, config: dict[str, Any]) -> dict[str, Any]:
    """``GRPOConfig`` fields equal to our settings (the module docstring's table); ValueError for what differs."""
    hp = module.hparams
    gen, loss, rewards = module.generation, module.loss, module.rewards
    for name, fine, why in REFUSED:
        section, _, key = name.rpartition(".")
        value = getattr(getattr(module, section), key) if section else hp.get(key, fine)
        if value != fine:
            raise ValueError(f"model.init_args.{name}: {value!r} cannot be cross-checked: {why}")
    if trainer.world_size != 1:
        raise ValueError(f"trainer: {trainer.world_size} processes; the cross-check runs in one")
    mu, steps = loss.num_iterations, trainer.max_steps
    if steps < 1 or steps % mu:
        raise ValueError(f"trainer.max_steps: {steps}; set a positive multiple of num_iterations ({mu})")
    completions = datamodule.hparams.batch_size * gen.num_generations
    micro = hp.micro_batch_size or completions
    if completions % micro:
        raise ValueError(f"model.init_args.micro_batch_size: {micro} does not divide a rollout's {completions}")
    precision = str(config.get("trainer", {}).get("precision", "32-true"))
    accelerator = str(config.get("trainer", {}).get("accelerator", "cpu")).replace("cuda", "gpu")
    if precision not in common.PRECISIONS or accelerator not in ("cpu", "gpu"):
        raise ValueError(
            f"trainer: accelerator {accelerator!r} / precision {precision!r}; use cpu|gpu and "
            f"one of {common.PRECISIONS}"
        )
    return dict(
        **common.hf_device_arguments(accelerator, precision),
        seed=config["seed_everything"],
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // micro,
        steps_per_generation=completions // micro,
        num_generations=gen.num_generations,
        max_completion_length=hp.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        min_p=None,
        repetition_penalty=1.0,
        beta=loss.beta,
        loss_type=loss.loss_type,
        epsilon=loss.epsilon,
        epsilon_high=loss.upper_epsilon,
        num_iterations=mu,
        importance_sampling_level=loss.importance_sampling_level,
        scale_rewards=rewards.scale_rewards,
        multi_objective_aggregation=rewards.multi_objective_aggregation,
        mask_truncated_completions=loss.mask_truncated_completions,
        reward_weights=[float(w) for w in module.reward_weights],
        learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm or 0.0,
        gradient_checkpointing=hp.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        disable_dropout=False,
        shuffle_dataset=False,  # the rows are already in our loader's order
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
    )


def rollout_prompts(datamodule: Any, rollouts: int) -> tuple[list[list[int]], list[list[int]]]:
    """Train-split indices per rollout: ours (our train loader's batches, epoch after epoch) and TRL's (the same
    indices in one stream, cut into full batches of ``batch_size``)."""
    from datamodules.samplers import ResumableSampler

    size = datamodule.hparams.batch_size
    sampler = ResumableSampler(datamodule.datasets["train"], shuffle=datamodule.hparams.shuffle, seed=datamodule.seed)
    ours: list[list[int]] = []
    stream: list[int] = []
    epoch = 0
    while len(ours) < rollouts or len(stream) < rollouts * size:
        sampler.set_epoch(epoch)  # as Lightning does at every epoch start
        order = list(sampler)
        ours += [order[i : i + size] for i in range(0, len(order), size)]
        stream += order
        epoch += 1
    return ours[:rollouts], [stream[i * size : (i + 1) * size] for i in range(rollouts)]


def training_rows(dataset: Any, indices: list[int]) -> list[dict[str, Any]]:
    """TRL's rows: our chat prompt and image of each record, plus every field our rewards receive (``meta``)."""
    from datamodules.prompts import build_messages
    from datamodules.transforms import to_pil

    rows = []
    for index in indices:
        record = dataset.records[index]
        image = dataset.image(record)
        sample = dataset.encode(record, image)
        rows.append(
            {
                **sample["meta"],
                "prompt": build_messages(record["question"], record["options"], dataset.system_prompt),
                "image": to_pil(image),
                "our_prompt_ids": sample["prompt_ids"].tolist(),
            }
        )
    return rows


def trl_reward(func: Any, fields: list[str], on_error: str, budget: int) -> Any:
    """Our reward as a TRL reward function: the completions' text and the fields ``rl.trajectory.reward_fields``
    gives (the record's meta, completion_length, max_completion_length), scored by our ``score_completions``."""
    from rewards.scoring import reward_name, score_completions

    def reward(prompts: list, completions: list, completion_ids: list[list[int]], **columns: Any) -> list:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        values = {k: columns[k] for k in fields}
        values["completion_length"] = [len(ids) for ids in completion_ids]
        values["max_completion_length"] = [budget] * len(texts)
        scores, _ = score_completions([func], texts, values, on_error=on_error)
        return [None if math.isnan(v) else v for v in scores[:, 0].tolist()]

    reward.__name__ = reward_name(func)
    return reward


def train_trl(module: Any, datamodule: Any, trainer: Any, config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """TRL's GRPOTrainer from our module's start, on our rows; saves ``out_dir/model``. Returns a summary."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from datamodules.processor import load_processor
    from models.attention import set_sdpa_backends
    from models.loading import load_model, save_model_dir, unwrap_base
    from training.schedules import warmup_cosine

    hp = module.hparams
    settings = grpo_settings(module, datamodule, trainer, config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    ours, theirs = rollout_prompts(datamodule, settings["max_steps"] // module.loss.num_iterations)
    rows = training_rows(datamodule.datasets["train"], [i for batch in theirs for i in batch])
    fields = [k for k in rows[0] if k not in ("prompt", "image", "our_prompt_ids")]
    same_ids = common.prompts_identical(Path(hp.model_path), rows)
    set_sdpa_backends(hp.sdpa_backends)
    model = load_model(
        hp.model_path,
        lora=hp.lora,
        freeze_vision=hp.freeze_vision,
        attn_implementation=hp.attn_implementation,
        gradient_checkpointing=hp.gradient_checkpointing,
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate, weight_decay=hp.weight_decay
    )
    schedule = warmup_cosine(optimizer, settings["max_steps"], hp.warmup_steps, hp.min_lr_ratio)
    errors = module.rewards.reward_errors
    grpo = GRPOTrainer(
        model=model,
        reward_funcs=[trl_reward(f, fields, errors, hp.max_new_tokens) for f in module.reward_funcs],
        args=GRPOConfig(
            output_dir=str(out_dir / "trl"),
            generation_kwargs={"suppress_tokens": common.suppressed_ids(Path(hp.model_path), full_length=False)},
            **settings,
        ),
        train_dataset=Dataset.from_list([{k: v for k, v in r.items() if k != "our_prompt_ids"} for r in rows]),
        optimizers=(optimizer, schedule),
    )
    start = time.perf_counter()
    grpo.train()
    seconds = time.perf_counter() - start
    save_model_dir(unwrap_base(grpo.model), load_processor(hp.model_path), out_dir / "model")
    return {
        "start_model": str(hp.model_path),
        "model": str(out_dir / "model"),
        "optimizer_steps": settings["max_steps"],
        "rollouts": len(ours),
        "rollouts_with_our_prompts": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "prompt_ids_identical": same_ids,
        "train_seconds": round(seconds, 1),
        "grpo_config": {k: v for k, v in settings.items() if k != "generation_kwargs"},
        "log_history": grpo.state.log_history,
    }


def evaluate(eval_config: str, data: dict[str, Any], seed: int, model_dir: Path, eval_dir: Path, name: str) -> Path:
    """``cli.py test`` of ``model_dir`` with ``data``, into the run folder ``eval_dir/<name>``."""
    from cli import main as cli

    overlay = {
        "seed_everything": seed,
        "model": {"init_args": {"model_path": str(model_dir)}},
        "data": data,
        "trainer": {
            "default_root_dir": str(eval_dir.parent),  # not the eval folder: only run folders belong there
            "callbacks": [
                {
                    "class_path": "evaluation.callbacks.EvaluationReport",
                    "init_args": {"out_dir": str(eval_dir), "name": name},
                }
            ],
        },
    }
    with _own_argv():
        cli(
            [
                "test",
                "--config",
                eval_config,
                "--config",
                write_yaml(eval_dir.parent / f"{eval_dir.name}_{name}.yaml", overlay),
            ]
        )
    return eval_dir / name


def _overrides(text: str) -> dict[str, Any]:
    """A YAML file's mapping, or an inline YAML mapping."""
    path = Path(text)
    value = yaml.safe_load(path.read_text() if path.is_file() else text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: need a YAML mapping of data settings (or a file holding one)")
    return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="GRPO config YAML (several merge in order)")
    parser.add_argument("--model_path", required=True, help="the starting model directory (our GRPO arm's too)")
    parser.add_argument("--out_dir", default="runs/trl_crosscheck")
    parser.add_argument("--eval_config", default="configs/eval.yaml")
    parser.add_argument(
        "--eval_data_overrides", type=_overrides, action="append", default=[], help="data settings for evaluation"
    )
    parser.add_argument(
        "--evaluation",
        nargs=2,
        action="append",
        metavar=("NAME", "DATA"),
        help="a test set: name and data overrides (YAML); default 'test' only. As experiments.replicate: 'test' "
        "writes <out_dir>/eval/, any other <out_dir>/eval-NAME/",
    )
    parser.add_argument("--name", default="trl_grpo", help="the evaluation run folder's name")
    parser.add_argument("--eval_start", action="store_true", help="also evaluate the starting model (run 'start')")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    module, datamodule, trainer, config = load_stage(args.config, args.model_path)
    summary = train_trl(module, datamodule, trainer, config, out_dir)
    seed = config["seed_everything"]
    models = {args.name: out_dir / "model", **({"start": Path(args.model_path)} if args.eval_start else {})}
    summary["eval"], summary["accuracy"] = {}, {}
    for evaluation, overrides in [(n, _overrides(d)) for n, d in args.evaluation or [("test", "{}")]]:
        data = deep_merge(config.get("data", {}), *args.eval_data_overrides, overrides)
        eval_dir = out_dir / ("eval" if evaluation == "test" else f"eval-{evaluation}")
        for name, model_dir in models.items():
            run = evaluate(args.eval_config, data, seed, model_dir, eval_dir, name)
            summary["eval"][f"{evaluation}/{name}"] = str(run)
            summary["accuracy"][f"{evaluation}/{name}"] = json.loads((run / "metrics.json").read_text())["accuracy"]
    common.save(summary, out_dir / "summary.json")
    print(
        f"TRL GRPO: {summary['rollouts_with_our_prompts']}/{summary['rollouts']} rollouts on our prompts; "
        f"accuracy {summary['accuracy']}; summary: {out_dir / 'summary.json'}"
    )
    return summary


if __name__ == "__main__":
    main()
