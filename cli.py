"""Command line: ``python cli.py {fit,validate,test,predict,export} --config configs/….yaml``.

LightningCLI turns every ``__init__`` argument of the modules, the datamodule and the trainer into YAML.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from datamodules.ct_vqa import CTVQADataModule
from lightning_modules.export import export_hf_model


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
        if ckpt_path in ("best", "last"):
            callback = self.checkpoint_callback
            if callback is None or callback.dirpath is None:
                raise ValueError(f"ckpt_path={ckpt_path!r} needs a ModelCheckpoint with a dirpath in the config")
            ckpt_path = str(Path(callback.dirpath) / "last.ckpt") if ckpt_path == "last" else _best(callback.dirpath)
        path = export_hf_model(model, ckpt_path, out_dir)
        print(f"exported {type(model).__name__} from {ckpt_path or 'its initial weights'} to {path}")
        return path


def _best(dirpath: str) -> str:
    """The best checkpoint recorded by ModelCheckpoint in ``last.ckpt`` (its callback state)."""
    import torch

    last = torch.load(Path(dirpath) / "last.ckpt", map_location="cpu", weights_only=False)
    for key, state in last.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_path"):
            return state["best_model_path"]
    return str(Path(dirpath) / "last.ckpt")


class CLI(LightningCLI):
    """LightningCLI with the model's directory linked to the datamodule's processor."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model_path", "data.processor_path")


def main(args: list[str] | None = None) -> CLI:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return CLI(
        datamodule_class=CTVQADataModule,
        trainer_class=Trainer,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
