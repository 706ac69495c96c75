"""Weakly supervised ROI proposal: a timm 2D classifier on axial slice bags, trained on CT-RATE's 18 volume
labels only; its class activation maps (CAMs) give, per abnormality, the slice and the box to zoom into.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import timm
import torch
import torch.nn.functional as F
from torchmetrics import CatMetric

from common.files import file_sha256
from datamodules.ct_slices import SliceRenderer
from datamodules.ctrate import CTRATE_LABELS, BadSampleError, bbox_of, label_components
from datamodules.roi_sources import ROIProposal, ROIQuery, ROISource
from datamodules.views import spaced
from evaluation.detection import auroc_or_nan

Pooling = Literal["lse", "max", "mean"]


def pool_slices(slice_logits: torch.Tensor, pooling: Pooling, lse_r: float = 5.0) -> torch.Tensor:
    """(B, S, L) slice logits → (B, L) volume logits.

    ``lse``: (1/r)·log(mean_s exp(r·x_s)), log-sum-exp pooling (Pinheiro & Collobert, CVPR 2015): mean at r → 0,
    max at r → ∞, so a finding on a few slices can decide the volume while every slice still gets gradient.
    """
    if pooling == "max":
        return slice_logits.amax(dim=1)
    if pooling == "mean":
        return slice_logits.mean(dim=1)
    return (torch.logsumexp(lse_r * slice_logits, dim=1) - math.log(slice_logits.shape[1])) / lse_r


def class_activation_maps(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images → (B, L, h, w): the model's head applied to each spatial feature vector.

    No assumption about the head beyond "pooling then layers": each position is fed as a 1×1 feature map.
    For a global-average-pool + linear head the map's mean is exactly the image logit (CAM, Zhou et al. 2016).
    """
    return maps_from_features(model, model.forward_features(images))


def maps_from_features(model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) backbone features → (B, L, h, w) activation maps (see ``class_activation_maps``)."""
    if features.ndim != 4:
        raise ValueError(
            f"class activation maps need a CNN backbone with (B, C, h, w) features, got shape {tuple(features.shape)}"
        )
    b, c, h, w = features.shape
    columns = features.permute(0, 2, 3, 1).reshape(b * h * w, c, 1, 1)
    return model.forward_head(columns).reshape(b, h, w, -1).permute(0, 3, 1, 2)


def box_from_map(cam: np.ndarray, threshold: float) -> list[int]:
    """[x0, y0, x1, y1] (exclusive ends) of the connected region around the map's maximum where the map,
    shifted to start at 0, reaches ``threshold`` × its maximum. Never empty: the maximum itself qualifies."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    shifted = cam - cam.min()
    components, _ = label_components(shifted >= threshold * shifted.max())
    peak = np.unravel_index(int(np.argmax(shifted)), shifted.shape)
    return bbox_of(components == components[peak])


class ROIClassifierModule(L.LightningModule):
    """Multi-label slice classifier, trained on bags of slices with volume labels (multiple-instance learning).

    Args:
        backbone: any timm CNN name (``resnet18``, ``resnet10t``, ``convnext_tiny``, …).
        pretrained: start from timm's pretrained weights (from ``pretrained_path`` when given, else timm's source).
        pretrained_path: a local weights file for the backbone (implies ``pretrained``); the head is new (18 labels).
        in_chans: input channels, one per CT window (must equal ``len(windows)``).
        image_size: side of the square slice image; must match the datamodule's.
        windows: CT windows the slices are rendered with; kept so ``propose`` renders slices as in training.
        pooling: how slice logits become the volume logit: ``lse`` (temperature ``lse_r``), ``max`` or ``mean``.
        lse_r: LSE temperature r: larger is closer to max pooling.
        learning_rate, weight_decay: AdamW.
        slice_batch_size: slices scored per forward pass in ``propose``.
    """

    labels: tuple[str, ...] = CTRATE_LABELS

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        pretrained_path: str | None = None,
        in_chans: int = 1,
        image_size: int = 64,
        windows: list[str] | None = None,
        pooling: Pooling = "lse",
        lse_r: float = 5.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        slice_batch_size: int = 64,
    ) -> None:
        super().__init__()
        windows = windows or ["lung"]
        if in_chans != len(windows):
            raise ValueError(f"in_chans={in_chans} but {len(windows)} window(s) {windows}: one channel per window")
        self.save_hyperparameters()
        self.hparams.windows = windows
        overlay = {"file": pretrained_path} if pretrained_path else None
        self.model = timm.create_model(
            backbone,
            pretrained=pretrained or pretrained_path is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=len(self.labels),
            in_chans=in_chans,
        )
        self.renderer = SliceRenderer(windows, image_size)
        self.val_scores = CatMetric(nan_strategy="disable")
        self.val_targets = CatMetric(nan_strategy="disable")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, C, H, W) slice bags → (volume logits (B, L), slice logits (B, S, L))."""
        b, s = images.shape[:2]
        slice_logits = self.model(images.flatten(0, 1)).view(b, s, -1)
        return pool_slices(slice_logits, self.hparams.pooling, self.hparams.lse_r), slice_logits

    def setup(self, stage: str) -> None:
        """Refuse a datamodule that renders slices differently from what ``propose`` will do."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for key in ("windows", "image_size"):
            if data is not None and key in data.hparams and data.hparams[key] != self.hparams[key]:
                raise ValueError(f"data {key}={data.hparams[key]} differs from model {key}={self.hparams[key]}")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, _ = self(batch["image"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits, _ = self(batch["image"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["target"])
        self.log("val/loss", loss, prog_bar=True, batch_size=len(logits), sync_dist=True)
        self.val_scores.update(logits.float())
        self.val_targets.update(batch["target"])

    def on_validation_epoch_end(self) -> None:
        """Macro AUROC over the labels with both classes in validation (others have no AUROC)."""
        scores, targets = self.val_scores.compute(), self.val_targets.compute()
        self.val_scores.reset()
        self.val_targets.reset()
        if scores.ndim != 2:  # no validation batch ran (CatMetric's empty state)
            return
        per_label = torch.tensor([auroc_or_nan(scores[:, j], targets[:, j].long()) for j in range(scores.shape[1])])
        present = ~per_label.isnan()
        if present.any():
            self.log("val/auroc", per_label[present].mean())
            self.log("val/auroc_labels", float(present.sum()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The saved state dict supersedes the pretrained weights: reloading needs neither the file nor a download.
        # A copy: Lightning stores the module's own hparams object here.
        checkpoint["hyper_parameters"] = {
            **checkpoint["hyper_parameters"],
            "pretrained": False,
            "pretrained_path": None,
        }

    def class_activation_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) slice images → (B, 18, h, w) per-label maps (see ``class_activation_maps``)."""
        return class_activation_maps(self.model, images)

    @torch.no_grad()
    def volume_maps(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every axial slice's label logits (Z, 18) and activation maps (Z, 18, h, w) of a (1, X, Y, Z) HU volume,
        in one pass (one backbone forward per slice): what ``propose`` needs for any label."""
        was_training = self.training
        self.eval()
        try:
            depth, step = volume.shape[-1], self.hparams.slice_batch_size
            logits, maps = [], []
            for start in range(0, depth, step):
                images = self.renderer(volume, range(start, min(start + step, depth))).to(self.device)
                features = self.model.forward_features(images)
                logits.append(self.model.forward_head(features))
                maps.append(maps_from_features(self.model, features))
        finally:
            self.train(was_training)
        return torch.cat(logits), torch.cat(maps)

    @torch.no_grad()
    def propose(
        self,
        volume: torch.Tensor,
        label: str,
        threshold: float = 0.5,
        maps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[int, list[int]]:
        """The axial slice and the box to zoom into for ``label`` in a (1, X, Y, Z) HU volume (LPS, as
        ``load_ct_volume`` returns): ``(k, [x0, y0, x1, y1])`` in ``axial_slice(volume, k)`` pixels, exclusive ends.

        The slice with the highest logit for the label; the box bounds the region of its CAM, upsampled to the
        slice, around the CAM's maximum that reaches ``threshold`` × the (min-subtracted) maximum. ``maps``:
        the volume's ``volume_maps``, when the caller keeps them for several labels.
        """
        return self.propose_slices(volume, label, 1, 1, threshold, maps)[0]

    @torch.no_grad()
    def propose_slices(
        self,
        volume: torch.Tensor,
        label: str,
        k: int,
        min_slices: int,
        threshold: float = 0.5,
        maps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[tuple[int, list[int]]]:
        """``propose`` for the ``k`` slices the classifier scores highest for ``label``, best first, at least
        ``min_slices`` apart: [(slice, box)]. Raises ValueError for an unknown label."""
        if label not in self.labels:
            raise ValueError(f"unknown label {label!r}; valid labels: {list(self.labels)}")
        j = self.labels.index(label)
        logits, cams = maps if maps is not None else self.volume_maps(volume)
        ranked = [(int(s), None) for s in torch.argsort(logits[:, j], descending=True, stable=True)]
        return [(s, self._box(volume, cams, s, j, threshold)) for s, _ in spaced(ranked, k, min_slices)]

    def _box(self, volume: torch.Tensor, cams: torch.Tensor, k: int, j: int, threshold: float) -> list[int]:
        cam = cams[k : k + 1, j : j + 1]
        height, width = volume.shape[2], volume.shape[1]  # axial_slice's display orientation: rows Y, cols X
        # The rendered square is the slice scaled to longest side = image_size, padded at the bottom/right:
        # back in slice pixels it is a max(H, W) square with the slice in its top-left corner.
        side = max(height, width)
        cam = F.interpolate(cam.float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        return box_from_map(cam[:height, :width].cpu().numpy(), threshold)


class CAMROI(ROISource):
    """Class activation maps of a trained ROI classifier (``python cli.py fit --config configs/roi_classifier.yaml``):
    the slice it scores highest for the abnormality and the box around that map's peak. Needs no report words.

    Args:
        checkpoint: the classifier's Lightning checkpoint.
        threshold: share of the map's peak that bounds the box.
        device: where the classifier runs.
    """

    name = "cam"

    def __init__(self, checkpoint: str, threshold: float = 0.5, device: str = "cpu") -> None:
        self.checkpoint = checkpoint
        self.threshold = threshold
        self._device = device  # where it runs does not change the boxes: not part of describe()
        self._module: Any = None
        self._maps: tuple[str, Any] = ("", None)  # one volume's slice logits and maps, for its other labels

    def propose(self, query: ROIQuery) -> ROIProposal | None:
        return self.propose_many(query, 1, 1)[0]

    def propose_many(self, query: ROIQuery, k: int, min_slices: int) -> list[ROIProposal]:
        """The classifier's top ``k`` slices for the label (``ROIClassifierModule.propose_slices``)."""
        if self._module is None:
            if not Path(self.checkpoint).is_file():
                raise BadSampleError(f"{self.checkpoint}: ROI classifier checkpoint not found (roi_source.checkpoint)")
            self._module = ROIClassifierModule.load_from_checkpoint(self.checkpoint, map_location=self._device).eval()
        # The volume stays on the CPU: slices are rendered there and only the images go to the device.
        if self._maps[0] != query.volume_name:
            self._maps = (query.volume_name, self._module.volume_maps(query.volume))
        found = self._module.propose_slices(query.volume, query.label, k, min_slices, self.threshold, self._maps[1])
        return [ROIProposal(s, [list(box)], self.name, "cam") for s, box in found]

    def describe(self) -> dict[str, Any]:
        """Also the checkpoint's SHA-256: a retrained classifier at the same path makes other boxes."""
        info = super().describe()
        digest = file_sha256(self.checkpoint)
        if digest is not None:
            info["checkpoint_sha256"] = digest
        return info
