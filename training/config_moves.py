"""Where the renovation (issue 18) moved modules and settings, and readers of a command line's configs that find
the old names, so ``cli.py`` can refuse them naming the new place (``cli.refuse_moved_settings``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Modules (and one class) the renovation of issue 18 moved: an old import path in a config is refused, naming the new.
MOVED_PATHS = {
    "lightning_modules.model_loading": "models.loading",
    "lightning_modules.embedded_model": "models.embedded",
    "lightning_modules.sharding": "models.sharding",
    "lightning_modules.attention": "models.attention",
    "lightning_modules.export": "training.export",
    "lightning_modules.rollout": "rl.sampling",  # the grouped training forward: rl.grouped_forward
    "lightning_modules.vllm_rollout": "rl.vllm_rollout",
    "lightning_modules.grpo_loss": "rl.loss",
    "lightning_modules.faults": "training.faults",
    "lightning_modules.checkpointing": "training.checkpointing",
    "lightning_modules.checkpoint_selection": "training.checkpoint_selection",
    "lightning_modules.schedules": "training.schedules",
    "lightning_modules.inference": "inference.ask",
    "lightning_modules.vqa_eval": "evaluation.answers",
    "datamodules.roi_sources.CAMROI": "lightning_modules.roi_classifier.CAMROI",
    # Names whose module split further (the longest old prefix wins).
    "lightning_modules.rollout.completion_logits": "rl.grouped_forward.completion_logits",
    "lightning_modules.rollout.grouped_completion_logits": "rl.grouped_forward.grouped_completion_logits",
    "lightning_modules.rollout.grouped_forward": "rl.grouped_forward.grouped_forward",
    "lightning_modules.rollout.chunked_head_logps": "rl.grouped_forward.chunked_head_logps",
    "lightning_modules.rollout.repeat_prompts": "rl.prompt_batch.repeat_prompts",
    "lightning_modules.rollout.select_rows": "rl.prompt_batch.select_rows",
    "lightning_modules.grpo_loss.group_advantages": "rl.advantages.group_advantages",
    "lightning_modules.grpo_loss.Advantages": "rl.advantages.Advantages",
    "lightning_modules.model_loading.ensure_model_dir": "models.embedded.ensure_model_dir",
    "lightning_modules.model_loading.load_processor": "datamodules.processor.load_processor",
    "lightning_modules.export.load_checkpoint_file": "training.checkpoint_files.load_checkpoint_file",
    "lightning_modules.checkpointing.load_checkpoint": "training.checkpoint_files.load_checkpoint",
    "lightning_modules.checkpointing.checkpoint_metadata": "training.checkpoint_files.checkpoint_metadata",
    "datamodules.ct_vqa.SyntheticData": "datamodules.synthetic.SyntheticData",
    "datamodules.ct_vqa.ZoomSpec": "datamodules.vqa_dataset.ZoomSpec",
    "datamodules.ct_vqa.AnnotationSubset": "datamodules.splits.AnnotationSubset",
}


def moved_path(value: str) -> str | None:
    """The new import path of ``value`` when it starts with a moved module (or is the moved class), else None."""
    for old in sorted(MOVED_PATHS, key=len, reverse=True):
        if value == old or value.startswith(old + "."):
            return MOVED_PATHS[old] + value[len(old) :]
    return None


def config_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict | list):
        for value in node.values() if isinstance(node, dict) else node:
            yield from config_strings(value)


def _load(value: str) -> Any:
    """A config given on the command line: a file's YAML, or the YAML text itself; None when it is neither."""
    try:
        return yaml.safe_load(Path(value).read_text() if Path(value).is_file() else value)
    except (OSError, yaml.YAMLError):
        return None


def command_line_configs(args: list[str]) -> list[tuple[str, Any]]:
    """The configs in ``args`` as (where, config): each ``--config`` (a file or YAML text), then the command
    line's own: its ``--model`` (a config or a class) and ``--model.…`` overrides, and every value given."""
    configs, model, values = [], {}, []
    tokens = iter(args)
    for token in tokens:
        key, eq, value = token.partition("=")
        values.append(value if key.startswith("-") else token)
        if key in ("--config", "-c", "--model") or key.startswith("--model."):
            value = value if eq else next(tokens, "")
            values.append(value)
        if key in ("--config", "-c") and isinstance(config := _load(value), dict):
            configs.append((value, config))
        elif key == "--model":
            model.update(config if isinstance(config := _load(value), dict) else {"class_path": value})
        elif key.startswith("--model."):
            model[key.removeprefix("--model.").removeprefix("init_args.").split(".")[0]] = value
    return [*configs, ("command line", {"model": model, "values": values})]


def config_models(config: Any) -> Iterator[dict[str, Any]]:
    """The ``model`` sections of a config, at its top or under a subcommand's name."""
    for name in (None, "fit", "validate", "test", "predict", "export", "ask"):
        section = config if name is None else config.get(name)
        if isinstance(section, dict) and isinstance(section.get("model"), dict):
            yield section["model"]
