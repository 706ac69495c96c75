"""Command line: ``python cli.py {fit,validate,test,predict,export,ask} --config configs/….yaml``.

LightningCLI turns every ``__init__`` argument of the modules, the datamodule and the trainer into YAML.
Every command takes ``--ckpt_path``: a checkpoint file (or sharded folder), ``last`` or ``best`` of the config's
checkpoint callbacks. An input error (a bad sample, a missing file, an unsafe checkpoint, a bad config value)
prints one line and exits with status 2; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from common.errors import ConfigError
from common.model_dirs import ModelLoadError
from datamodules.ct_vqa import CTVQADataModule
from datamodules.ctrate import BadSampleError
from rl.config import MOVED_KEYS
from training.checkpoint_files import UnsafeCheckpointError, checkpoint_metadata, unsafe_checkpoint_error
from training.checkpoint_selection import best_checkpoint
from training.config_moves import command_line_configs, config_models, config_strings, moved_path
from training.export import export_hf_model

INPUT_ERROR_EXIT = 2  # argparse's status for a usage error


# What a user's input, not a bug, causes: one line, no traceback.
INPUT_ERRORS = (BadSampleError, ConfigError, ModelLoadError, UnsafeCheckpointError, FileNotFoundError, FileExistsError)
# jsonargparse's report lines that repeat the value given or list the alternatives of a union: noise in one line.
_NOISE = (
    "Given value",
    "Subtypes:",
    "Errors:",
    "Does not validate against any of the Union subtypes",
    "Expected a <class 'NoneType'>",
)


def one_line(message: str) -> str:
    """A multi-line (jsonargparse) error report as one line: the reasons, not the dump of the value."""
    lines = (line.strip().lstrip("- ") for line in message.splitlines())
    return " ".join(line for line in lines if line and not line.startswith(_NOISE))


def _is_grpo(class_path: str | None) -> bool:
    """Whether the model class named is a GRPOModule (None, no class named: the moved keys are GRPO's)."""
    if class_path is None or class_path == "GRPOModule":
        return True
    from lightning_modules.grpo import GRPOModule

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, GRPOModule)


def refuse_moved_settings(args: list[str] | dict[str, Any]) -> None:
    """Refuse a config that names a setting or a module where it was before the renovation, naming its new place.

    Raises:
        ConfigError: an old import path (``MOVED_PATHS``) anywhere, or an old flat GRPO key given to a GRPOModule
            (``model.init_args.temperature`` → ``model.init_args.generation.temperature``: ``rl.config.MOVED_KEYS``).
    """
    configs = [("config", args)] if isinstance(args, dict) else command_line_configs(args)
    for where, config in configs:
        for value in config_strings(config):
            if new := moved_path(value):
                raise ConfigError(f"{where}: {value} moved to {new}")
    models = [(where, model) for where, config in configs for model in config_models(config)]
    class_path = next((m["class_path"] for _, m in reversed(models) if isinstance(m.get("class_path"), str)), None)
    for where, model in models:
        init_args = model.get("init_args") if isinstance(model.get("init_args"), dict) else {}
        for key in [*init_args, *model]:
            if key in MOVED_KEYS and _is_grpo(class_path):
                raise ConfigError(f"{where}: model.init_args.{key} moved to model.init_args.{MOVED_KEYS[key]}")


def refuse_moved_hparams(ckpt_path: str) -> None:
    """Refuse a GRPO checkpoint written before its settings moved into sections (LightningCLI would hand its flat
    hyperparameters to ``GRPOModule``), naming the first moved key and its new place.

    Raises:
        ConfigError: the checkpoint's ``hyper_parameters`` hold a key of ``rl.config.MOVED_KEYS``.
        UnsafeCheckpointError: the checkpoint holds code.
    """
    try:
        hparams = checkpoint_metadata(ckpt_path).get("hyper_parameters") or {}
    except pickle.UnpicklingError as error:
        raise unsafe_checkpoint_error(ckpt_path, error) from None
    old = sorted(key for key in hparams if key in MOVED_KEYS)
    if old:
        raise ConfigError(
            f"{ckpt_path}: written before GRPO's settings moved into sections (hyper_parameters.{old[0]} is now "
            f"model.init_args.{MOVED_KEYS[old[0]]}); resume it with the code that wrote it, or export it "
            "(cli.py export) and start a new run from the export"
        )


_debug = False  # set by run(--debug): usage errors raise with their traceback


class ArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose usage errors are one line (``error: …``) instead of the whole usage above it."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or _debug:
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        sys.stderr.write(f"error: {one_line(message)} (options: {prog} --help)\n")
        sys.exit(INPUT_ERROR_EXIT)


class Trainer(L.Trainer):
    """Lightning's Trainer plus ``export``: checkpoint → Hugging Face model directory (LoRA merged)."""

    def export(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        out_dir: str = "artifacts/sft-model",
    ) -> Path:
        """Write ``model`` (weights from ``ckpt_path``: a path, or ``best``/``last`` of this run) to ``out_dir``."""
        ckpt_path = self.checkpoint_file(ckpt_path)
        if not hasattr(model, "model") or "model_path" not in model.hparams:
            raise ConfigError(f"export writes a Hugging Face model directory; {type(model).__name__} has none")
        path = export_hf_model(model, ckpt_path, out_dir)
        source = ckpt_path or f"its initial weights ({model.hparams.get('model_path', 'built in')})"
        print(f"exported {type(model).__name__} from {source} to {path}")
        return path

    def ask(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule,
        volume: str,
        question: str,
        options: list[str] | None = None,
        roi: list[int] | None = None,
        roi_mask: str | None = None,
        slice_index: int | None = None,
        ckpt_path: str | None = None,
        out_dir: str = "runs/ask",
        abnormality: str | None = None,
    ) -> dict:
        """Answer ``question`` about your own CT (NIfTI file or DICOM folder); prints the reasoning and the answer
        and saves the zoom-embedded image the model saw (``out_dir/image.png``) with ``answer.json``.

        Args:
            volume: a .nii/.nii.gz file or a folder holding one DICOM series.
            question: the question, e.g. "Is there a lung nodule in the outlined region?".
            options: answer options shown to the model, quoted on the command line: ``--options '["yes", "no"]'``
                (bare yes/no would parse as YAML booleans); a free-text answer when omitted.
            roi: ROI box [x0, y0, x1, y1] in pixels of the axial slice (display orientation).
            roi_mask: a NIfTI mask of the ROI on the same grid as the volume (its fullest slice is shown).
            slice_index: axial slice to show (default: the mask's fullest slice, else the middle one).
            ckpt_path: a Lightning checkpoint to load into the model, or ``last``/``best`` of the config's checkpoint
                callbacks (default: the model directory's weights).
            out_dir: where image.png and answer.json go.
            abnormality: the CT-RATE label the question is about; with no roi, roi_mask or slice_index, the
                datamodule's ``roi_source`` (e.g. the ROI classifier's CAM) proposes where to zoom.
        """
        from inference.ask import ask
        from training.checkpoint_files import load_checkpoint_file

        ckpt_path = self.checkpoint_file(ckpt_path)
        model.configure_model()
        if ckpt_path is not None:
            model.load_state_dict(load_checkpoint_file(ckpt_path)["state_dict"])
        model.to(self.strategy.root_device).eval()
        return ask(model, datamodule, volume, question, options, roi, roi_mask, slice_index, out_dir, abnormality)

    def checkpoint_file(self, ckpt_path: str | None) -> str | None:
        """``last``/``best`` → that checkpoint of the config's checkpoint callbacks, on disk; a path unchanged.

        ``last``: the newest ``last*.ckpt`` in their folders (as Lightning picks it). ``best``: the best checkpoint
        on disk by a monitoring callback's metric and mode (``checkpoint_selection.best_checkpoint``): Lightning knows
        ``best`` only inside the process that trained, and another checkpoint's record of it may be stale; None
        when the recorded starting model is at least as good (``start_candidate``): the model's initial weights.

        Raises:
            ConfigError: no checkpoint callback with a folder (and, for ``best``, a monitor) in the config.
            FileNotFoundError: no such checkpoint in those folders yet.
        """
        if ckpt_path not in ("best", "last"):
            return ckpt_path
        callbacks = [cb for cb in self.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        if ckpt_path == "best":
            monitored = [cb for cb in callbacks if cb.monitor]
            if not monitored:
                raise ConfigError("--ckpt_path best needs a checkpoint callback with a dirpath and a monitor")
            best = best_checkpoint(monitored[0].dirpath, monitored[0].monitor, monitored[0].mode)
            return None if best is None else str(best)  # None: the starting model beat every checkpoint
        folders = sorted({Path(cb.dirpath) for cb in callbacks if cb.save_last})
        if not folders:
            raise ConfigError("--ckpt_path last needs a checkpoint callback with a dirpath and save_last: true")
        found = [p for folder in folders for p in folder.glob(f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}*.ckpt")]
        if not found:
            raise FileNotFoundError(f"no last checkpoint in {', '.join(map(str, folders))}: no fit has saved one yet")
        return str(max(found, key=lambda p: p.stat().st_mtime))


class DebugRunSaveConfig(SaveConfigCallback):
    """LightningCLI's config.yaml, not written by a ``fast_dev_run`` (a debug run leaves nothing behind)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.fast_dev_run:
            super().setup(trainer, pl_module, stage)


class CLI(LightningCLI):
    """LightningCLI with the model's directory linked to the datamodule's processor.

    ``data:`` defaults to the CT-VQA datamodule (configs give its init args directly); a config may name
    another one with ``class_path`` (the ROI classifier trains on slice bags, configs/roi_classifier.yaml).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}, "ask": {"model", "datamodule"}}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        """Our own commands' arguments (``ask``'s volume and question, ``export``'s out_dir) first in ``--help``,
        before the ~60 trainer options every subcommand shares."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("ask", "export"):
            own = set(self._subcommand_method_arguments[subcommand])
            first = [a for a in parser._actions if a.dest in own]
            parser._actions[:] = [*first, *(a for a in parser._actions if a.dest not in own)]
            groups = [g for g in parser._action_groups if any(a.dest in own for a in g._group_actions)]
            parser._action_groups[:] = [*groups, *(g for g in parser._action_groups if g not in groups)]
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data": {"class_path": f"{CTVQADataModule.__module__}.{CTVQADataModule.__name__}"}})
        # Applied only where both ends exist: the ROI classifier has no model_path, its datamodule no processor.
        parser.link_arguments("model.init_args.model_path", "data.init_args.processor_path")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.processor_trust_remote_code")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI re-reads a checkpoint's hyperparameters here (``weights_only=True``); its refusal of a
        checkpoint holding code becomes one clear line."""
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if ckpt_path and Path(ckpt_path).is_file():
            refuse_moved_hparams(ckpt_path)
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as error:
            raise unsafe_checkpoint_error(self.config[self.config.subcommand].get("ckpt_path"), error) from None

    def instantiate_classes(self) -> None:
        """A value a class refuses on construction is the config's fault: say so in one line."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            raise ConfigError(f"config: {one_line(str(error))}") from error

    def _checkpoint_arguments(self) -> None:
        """``best`` as a file on disk (Lightning resolves it only in the process that trained), and checkpoints
        loaded as data: ``weights_only=True`` unless the command line says otherwise."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "best":  # `last` Lightning finds itself (and starts afresh without one)
            config["ckpt_path"] = self.trainer.checkpoint_file("best")
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True

    def before_fit(self) -> None:
        self._checkpoint_arguments()

    def before_validate(self) -> None:
        self._checkpoint_arguments()

    def before_predict(self) -> None:
        self._checkpoint_arguments()

    def before_test(self) -> None:
        """Hand the exact parsed config to the evaluation report, which records it next to the numbers."""
        from evaluation.callbacks import EvaluationReport

        self._checkpoint_arguments()
        text = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
        for callback in self.trainer.callbacks:
            if isinstance(callback, EvaluationReport):
                callback.config_yaml = text


def main(args: list[str] | dict[str, Any] | None = None, **cli_kwargs: Any) -> CLI:
    """The project's LightningCLI on ``args`` (command-line words, or a config dict); ``cli_kwargs`` override
    LightningCLI's arguments (``run=False`` builds the classes without running a command)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    refuse_moved_settings(sys.argv[1:] if args is None else args)
    settings: dict[str, Any] = {
        "datamodule_class": L.LightningDataModule,
        "subclass_mode_data": True,
        "trainer_class": Trainer,
        "subclass_mode_model": True,
        "parser_class": ArgumentParser,
        "save_config_callback": DebugRunSaveConfig,
        "save_config_kwargs": {"overwrite": True},
    }
    return CLI(**{**settings, **cli_kwargs}, args=args)


def run(args: list[str] | None = None) -> int:
    """``main`` as a program: 0 on success; an input error printed as one line (``error: …``) and status 2,
    its traceback only after ``--debug``; bugs raise as usual."""
    debug = "--debug" in (sys.argv if args is None else args)
    if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [a for a in sys.argv if a != "--debug"]
    else:
        args = [a for a in args if a != "--debug"]
    global _debug
    _debug = debug
    try:
        main(args)
    except INPUT_ERRORS as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return INPUT_ERROR_EXIT
    finally:
        _debug = False
    return 0


if __name__ == "__main__":
    sys.exit(run())
