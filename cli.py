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
            ckpt_path: a Lightning checkpoint to load into the model (default: the model directory's weights).
            out_dir: where image.png and answer.json go.
            abnormality: the CT-RATE label the question is about; with no roi, roi_mask or slice_index, the
                datamodule's ``roi_source`` (e.g. the ROI classifier's CAM) proposes where to zoom.
        """
        from lightning_modules.export import load_checkpoint_file
        from lightning_modules.inference import ask

        model.configure_model()
        if ckpt_path is not None:
            model.load_state_dict(load_checkpoint_file(ckpt_path)["state_dict"])
        model.to(self.strategy.root_device).eval()
        return ask(model, datamodule, volume, question, options, roi, roi_mask, slice_index, out_dir, abnormality)


def _best(dirpath: str) -> str:
    """The best checkpoint recorded by the checkpoint callbacks in ``last.ckpt`` (their state), looked up in
    ``dirpath`` itself: the recorded path is absolute and stale once the run folder has moved."""
    import torch

    last = torch.load(Path(dirpath) / "last.ckpt", map_location="cpu", weights_only=False)
    for state in last.get("callbacks", {}).values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best:
            return best if Path(best).is_file() else str(Path(dirpath) / Path(best).name)
    return str(Path(dirpath) / "last.ckpt")


class CLI(LightningCLI):
    """LightningCLI with the model's directory linked to the datamodule's processor.

    ``data:`` defaults to the CT-VQA datamodule (configs give its init args directly); a config may name
    another one with ``class_path`` (the ROI classifier trains on slice bags, configs/roi_classifier.yaml).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}, "ask": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data": {"class_path": f"{CTVQADataModule.__module__}.{CTVQADataModule.__name__}"}})
        # Applied only where both ends exist: the ROI classifier has no model_path, its datamodule no processor.
        parser.link_arguments("model.init_args.model_path", "data.init_args.processor_path")

    def before_test(self) -> None:
        """Hand the exact parsed config to the evaluation report, which records it next to the numbers."""
        from evaluation.callbacks import EvaluationReport

        text = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
        for callback in self.trainer.callbacks:
            if isinstance(callback, EvaluationReport):
                callback.config_yaml = text


def main(args: list[str] | None = None) -> CLI:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return CLI(
        datamodule_class=L.LightningDataModule,
        subclass_mode_data=True,
        trainer_class=Trainer,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
