"""Axial-slice bags for the weakly supervised ROI classifier: one CT-RATE volume → S slices + its 18 labels.

Multiple-instance learning: the labels belong to the volume, not to any slice, so a sample is a bag of slices
spread over the volume and the model pools its slice scores (lightning_modules/roi_classifier.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from monai.transforms import Compose, Resized, SpatialPadd
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from datamodules.ctrate import (
    CTRATE_LABELS,
    VolumeCache,
    axial_slice,
    patient_id,
    read_split,
)
from datamodules.samplers import ResumableSampler, resume_skip
from datamodules.seeding import resolve_seed
from datamodules.splits import split_patients
from datamodules.synthetic import SyntheticData, generate_if_missing
from datamodules.transforms import HUWindowd

log = logging.getLogger(__name__)


class SliceRenderer:
    """Axial HU slices → the (C, size, size) images the classifier sees.

    Windowed and resized (longest side = ``image_size``) exactly as the VLM pipeline renders a slice, without
    the zoom inset; then zero-padded at the end (bottom/right) to a square so bags of any slice shape batch.
    Padding at the end keeps pixel (0, 0) where it was: a map over the square maps back by scaling only.
    C = number of windows (one window → one grey channel).
    """

    def __init__(self, windows: Sequence[str], image_size: int) -> None:
        self.channels = len(windows)
        self.image_size = image_size
        self.transform = Compose(
            [
                HUWindowd(keys="image", windows=list(windows)),
                Resized(keys="image", spatial_size=image_size, size_mode="longest", mode="bilinear"),
                SpatialPadd(keys="image", spatial_size=(image_size, image_size), method="end"),
            ]
        )

    def __call__(self, volume: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """Slices ``indices`` of a (1, X, Y, Z) HU volume → (S, C, image_size, image_size) in [0, 1]."""
        images = []
        for k in indices:
            image = self.transform({"image": torch.from_numpy(axial_slice(volume, int(k)))})["image"]
            images.append(convert_to_tensor(image, dtype=torch.float32, track_meta=False)[: self.channels])
        return torch.stack(images).clamp_(0, 1)


def slice_positions(depth: int, n: int, generator: torch.Generator | None = None) -> list[int]:
    """``n`` slice indices spread over ``depth``: one per equal bin, at its centre, or uniformly inside it when a
    ``generator`` is given (training jitter). Bins repeat indices when ``depth < n``."""
    edges = np.linspace(0, depth, n + 1)
    if generator is None:
        return [min(int((lo + hi) / 2), depth - 1) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    u = torch.rand(n, generator=generator).numpy()
    return [min(int(lo + x * (hi - lo)), depth - 1) for lo, hi, x in zip(edges[:-1], edges[1:], u, strict=True)]


class CTSliceDataset(Dataset):
    """One volume (a row of ``read_split``) → {"image": (S, C, H, W), "target": (18,), "volume_name": str}.

    Training bags jitter their slice positions. The generator is seeded with ``seed`` in the main process and
    with the worker's seed in a DataLoader worker (PyTorch derives it from the loader's seeded generator; the
    workers persist, so their generators run on across epochs), so the jitter is reproducible and still differs
    between epochs.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        root: Path,
        renderer: SliceRenderer,
        slices_per_volume: int,
        jitter: bool,
        seed: int,
        volume_cache_size: int,
    ) -> None:
        self.rows = rows.reset_index(drop=True)
        self.renderer = renderer
        self.slices_per_volume = slices_per_volume
        self.jitter = jitter
        self.seed = seed
        self.volumes = VolumeCache(root, volume_cache_size)
        self.targets = torch.tensor(self.rows[list(CTRATE_LABELS)].to_numpy(dtype=np.float32))
        self._generator: torch.Generator | None = None
        self._generator_seed: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _rng(self) -> torch.Generator:
        info = get_worker_info()
        seed = info.seed if info is not None else self.seed
        if self._generator is None or seed != self._generator_seed:
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_seed = seed
        return self._generator

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index].to_dict()
        volume = self.volumes.get(row["VolumeName"], row)
        positions = slice_positions(volume.shape[-1], self.slices_per_volume, self._rng() if self.jitter else None)
        return {
            "image": self.renderer(volume, positions),
            "target": self.targets[index],
            "volume_name": row["VolumeName"],
        }


class CTSliceDataModule(L.LightningDataModule):
    """CT-RATE volumes as slice bags with their 18 labels: train/val from CT-RATE train (split by patient),
    test = CT-RATE valid.

    Args:
        data_dir: CT-RATE root (the folder holding ``dataset/``), real or synthetic.
        synthetic: if set and ``data_dir`` is missing, a synthetic CT-RATE is generated there.
        windows: CT windows (lung, mediastinal, bone); one → one grey channel, three → three channels.
        image_size: side of the square slice image (longest side resized to it, the rest zero-padded).
        slices_per_volume: slices per bag (S), spread over the volume.
        batch_size: volumes per training batch (a batch holds batch_size × S slices).
        eval_batch_size: volumes per validation/test batch.
        val_fraction: share of CT-RATE-train patients held out for validation.
        num_workers: DataLoader worker processes (volumes are decoded there).
        seed: the patient split, the shuffle and the slice jitter.
        volume_cache_size: decoded volumes kept in memory per dataset (and per worker); a real CT-RATE volume is
            ~0.5 GB and a training epoch visits each once, so keep it small.
        max_volumes: cap per split, for quick runs (all when null).
    """

    def __init__(
        self,
        data_dir: str = "data/synthetic-ctrate",
        synthetic: SyntheticData | None = None,
        windows: list[str] | None = None,
        image_size: int = 64,
        slices_per_volume: int = 8,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        val_fraction: float = 0.15,
        num_workers: int = 0,
        seed: int | None = None,
        volume_cache_size: int = 2,
        max_volumes: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(synthetic, dict):  # LightningCLI may hand nested dataclasses over as plain dicts
            synthetic = SyntheticData(**synthetic)
        windows = windows or ["lung"]
        self.save_hyperparameters()
        self.hparams.synthetic, self.hparams.windows = synthetic, windows
        self.datasets: dict[str, CTSliceDataset] = {}

    @property
    def root(self) -> Path:
        return Path(self.hparams.data_dir)

    def prepare_data(self) -> None:
        """Generate the synthetic data set if asked for and missing (rank 0 only, by Lightning)."""
        # Volumes and labels only: the VQA files are the VLM datamodule's to build, with its ROI source.
        generate_if_missing(self.root, self.hparams.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train = read_split(self.root, "train")
        patients = train["VolumeName"].map(patient_id)
        val_patients = split_patients(list(patients), self.hparams.val_fraction, resolve_seed(self.hparams.seed))
        splits = {
            "train": train[~patients.isin(val_patients)],
            "val": train[patients.isin(val_patients)],
            "test": read_split(self.root, "valid"),
        }
        renderer = SliceRenderer(self.hparams.windows, self.hparams.image_size)
        for name, rows in splits.items():
            if self.hparams.max_volumes:
                rows = rows.iloc[: self.hparams.max_volumes]
            self.datasets[name] = CTSliceDataset(
                rows,
                self.root,
                renderer,
                self.hparams.slices_per_volume,
                jitter=name == "train",
                seed=resolve_seed(self.hparams.seed),
                volume_cache_size=self.hparams.volume_cache_size,
            )
        log.info("CT slice bags (volumes): %s", {k: len(v) for k, v in self.datasets.items()})

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        sampler = None
        if shuffle:  # the training order: from (seed, epoch) only, resumable mid-epoch (see CTVQADataModule)
            sampler = ResumableSampler(self.datasets[split], shuffle=True, seed=resolve_seed(self.hparams.seed))
            sampler.skip = resume_skip(self.trainer, sampler, batch_size)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            generator=torch.Generator().manual_seed(resolve_seed(self.hparams.seed)),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.hparams.eval_batch_size)
