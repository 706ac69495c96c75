"""Lightning callbacks that turn `cli.py test` and `cli.py predict` into files on disk."""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from common.files import atomic_write_text, file_sha256
from datamodules.transforms import to_pil
from evaluation.case_images import Renderer
from evaluation.formatting import json_safe
from evaluation.run_folder import write_run


def run_info(trainer: L.Trainer, module: L.LightningModule, name: str, split: str) -> dict[str, Any]:
    """What was evaluated, on which data and with which seeds: the provenance block of run.json."""
    datamodule = trainer.datamodule
    data = dict(getattr(datamodule, "hparams", {}))
    vqa_dir = Path(data.get("vqa_dir") or Path(data.get("data_dir", ".")) / "vqa")
    vqa_file = vqa_dir / ("valid.jsonl" if split == "test" else "train.jsonl")
    synthetic = data.get("synthetic")
    return {
        "name": name,
        "model": f"{type(module).__module__}.{type(module).__qualname__}",
        "model_path": module.hparams.get("model_path"),
        "ckpt_path": trainer.ckpt_path,
        "split": split,
        "vqa_file": str(vqa_file),
        "vqa_file_sha256": file_sha256(vqa_file),
        "data_dir": data.get("data_dir"),
        "synthetic": vars(synthetic) if synthetic is not None and hasattr(synthetic, "__dict__") else synthetic,
        "zoom": vars(data["zoom"]) if getattr(data.get("zoom"), "__dict__", None) else data.get("zoom"),
        "image_size": data.get("image_size"),
        "prompt_format": data.get("prompt_format"),
        "val_fraction": data.get("val_fraction"),
        "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
        "data_seed": data.get("seed"),
        "max_new_tokens": module.hparams.get("max_new_tokens"),
        "world_size": trainer.world_size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def dataset_renderer(datamodule: Any, split: str = "test") -> Renderer | None:
    """A prediction row → the PIL image its question was encoded with: the datamodule's own dataset renders the
    row's record again (``CTVQADataset.image``: windowed, zoom-embedded, resized; deterministic) and ``to_pil``
    makes the image the processor was given. Rendering only the few cases a report shows keeps evaluation free of
    image copies (``keep_images`` would hold one per question). None when the datamodule has no such dataset."""
    dataset = getattr(datamodule, "datasets", {}).get(split)
    if dataset is None or not hasattr(dataset, "image"):
        return None
    records = {r["id"]: r for r in dataset.records}

    def render(row: dict[str, Any]) -> Any:
        record = records.get(row["id"])
        return None if record is None else to_pil(dataset.image(record))

    return render


# What makes two evaluations the same one (run.json keys): the same model and weights on the same questions.
IDENTITY = ("model", "model_path", "ckpt_path", "split", "vqa_file_sha256")


class EvaluationReport(L.Callback):
    """After ``test``, write the run folder ``out_dir/name`` (metrics, predictions, report.md and report.html with
    the cases and their images, plots, provenance; ``evaluation/run_folder.py``).

    A folder that already holds the results of another evaluation (another model, checkpoint, split or VQA
    file) is never replaced silently: the test refuses to start. Re-running the same evaluation replaces it.
    A ``fast_dev_run`` (a few batches, to debug) writes and refuses nothing: its numbers are no evaluation.

    Args:
        out_dir: parent folder of evaluation runs.
        cases_per_type: wrong and right answers per question type the reports show with their images.
        case_seed: seed of the cases' draw (the same run shows the same cases).
        name: run name (rows of a comparison group by it); default: ``<run>-<checkpoint>`` (``sft-last`` for
            runs/sft/checkpoints/last.ckpt) or the model folder's name.
        overwrite: replace the folder even when it holds another evaluation's results.
    """

    def __init__(
        self,
        out_dir: str = "runs/eval",
        name: str | None = None,
        overwrite: bool = False,
        cases_per_type: int = 2,
        case_seed: int = 0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.cases_per_type = cases_per_type
        self.case_seed = case_seed
        self.name = name
        self.overwrite = overwrite
        self.config_yaml: str | None = None  # set by cli.py from the parsed config
        self.report_path: Path | None = None

    def _name(self, trainer: L.Trainer, module: L.LightningModule) -> str:
        if self.name:
            return self.name
        if trainer.ckpt_path:
            # runs/sft/checkpoints/last.ckpt -> "sft-last": every run has a last.ckpt, so the stem alone collides.
            ckpt = Path(trainer.ckpt_path)
            run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
            return f"{run.name}-{ckpt.stem}" if run.name else ckpt.stem
        return Path(str(module.hparams.get("model_path", "model"))).name

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse, before any work, to replace another evaluation's run folder."""
        if trainer.fast_dev_run:
            return
        run_dir = self.out_dir / self._name(trainer, pl_module)
        if self.overwrite or not (run_dir / "run.json").is_file():
            return
        before = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        now = run_info(trainer, pl_module, run_dir.name, split="test")
        differs = [key for key in IDENTITY if before.get(key) != now.get(key)]
        if differs:
            raise FileExistsError(
                f"{run_dir} holds the results of another evaluation ({', '.join(differs)} differ: "
                f"{', '.join(f'{k}={before.get(k)!r}' for k in differs)}). Give this one another name "
                "(EvaluationReport's name), or set its overwrite: true to replace them."
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "test_results", None)
        if not trainer.is_global_zero or results is None or trainer.fast_dev_run:
            return
        name = self._name(trainer, pl_module)
        info = run_info(trainer, pl_module, name, split="test")
        self.report_path = write_run(
            self.out_dir / name,
            results["metrics"],
            results["predictions"],
            info,
            self.config_yaml,
            render=dataset_renderer(trainer.datamodule),
            cases_per_type=self.cases_per_type,
            case_seed=self.case_seed,
        )
        print(f"evaluation report: {self.report_path}")


class PredictionWriter(BasePredictionWriter):
    """Write ``cli.py predict`` rows to ``path`` as JSONL (question, reasoning, answer, truth, correct, p(yes)).

    Each rank writes its own part while predicting; rank 0 joins them at the end into one file, renamed into
    place, so an interrupted run never leaves a truncated predictions file. A ``fast_dev_run`` writes nothing.
    """

    def __init__(self, path: str = "runs/predict/predictions.jsonl") -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)

    def _part(self, rank: int) -> Path:
        return self.path.with_name(f".{self.path.name}.rank{rank}.part")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._part(trainer.global_rank).write_text("")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if trainer.fast_dev_run:
            return
        with self._part(trainer.global_rank).open("a", encoding="utf-8") as f:
            for row in prediction:
                row = {k: v for k, v in row.items() if k != "padding"}
                f.write(json.dumps(json_safe(row), ensure_ascii=False) + "\n")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        parts = [self._part(rank) for rank in range(trainer.world_size)]
        atomic_write_text(self.path, "".join(p.read_text(encoding="utf-8") for p in parts))
        for part in parts:
            part.unlink()
        print(f"predictions: {self.path}")
