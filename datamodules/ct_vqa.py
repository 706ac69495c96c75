"""CT-VQA LightningDataModule: CT-RATE volumes + VQA JSONL → zoom-embedded images → Qwen2.5-VL chat batches."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.collate import VQACollator
from datamodules.ctrate import BadSampleError, read_metadata
from datamodules.image_conditions import ImageCondition
from datamodules.processor import load_processor
from datamodules.prompts import PromptFormat, check_generation_prompt
from datamodules.protocol_records import Protocol, protocol_records
from datamodules.roi_sources import ROISource
from datamodules.samplers import EvenEvalSampler, ResumableSampler, resume_skip, world
from datamodules.seeding import resolve_seed
from datamodules.splits import AnnotationSubset, annotation_part, split_patients
from datamodules.synthetic import SyntheticData, generate_if_missing
from datamodules.views import ViewSpec
from datamodules.vqa_dataset import CTVQADataset, ZoomSpec
from datamodules.vqa_records import read_vqa_jsonl

log = logging.getLogger(__name__)

Stage = Literal["train", "val", "test"]


def without_digests(spec: Any) -> Any:
    """A source's ``describe()`` as ``--roi_source`` takes it: file digests (``checkpoint_sha256``) left out, also
    those of a source nested in another's settings (``MaskROI.extra_views``)."""
    if isinstance(spec, dict):
        return {k: without_digests(v) for k, v in spec.items() if k != "checkpoint_sha256"}
    return spec


class CTVQADataModule(L.LightningDataModule):
    """CT-RATE-VQA for training (CT-RATE train split, divided by patient into train/val) and test (CT-RATE valid).

    Args:
        data_dir: CT-RATE root (the folder holding ``dataset/``), real or synthetic.
        processor_path: model directory whose processor renders prompts and images (linked to the model's path).
        processor_trust_remote_code: run processor code the model directory ships (linked to the evaluator's
            ``trust_remote_code``).
        vqa_dir: folder with ``train.jsonl`` and ``valid.jsonl``; default ``data_dir/vqa``.
        synthetic: if set and ``data_dir`` is missing, a synthetic CT-RATE and its VQA files are generated there.
        windows: CT windows (lung, mediastinal, bone); one → grey, three → RGB.
        zoom: zoom-in embedding settings, or null for the plain global image (ablation).
        image_size: longest side of the image given to the processor (pixels).
        prompt_format: ``think`` (<think>…</think><answer>…</answer>) or ``no_think`` (<answer> only).
        system_prompt: replaces the default system prompt (a radiologist's task, the image, the answer format).
        chat_template_kwargs: extra arguments of the model's chat template, e.g. ``{enable_thinking: false}`` for
            templates that open a reasoning block themselves (Qwen3-style); our targets write their own <think>.
        question_types: keep only these question types (all when null).
        val_fraction: share of CT-RATE-train patients held out for validation.
        max_samples: cap per split, for quick runs (all when null).
        shuffle: shuffle the training set each epoch; the order depends only on (seed, epoch), so a resumed fit
            continues exactly where its checkpoint left off.
        skip_bad_samples: skip, count and report bad samples instead of stopping at the first.
        slice_cache_dir: a folder for the axial HU slices the questions use, cut from their volumes once and
            reused by every later epoch and run (``datamodules/slice_cache.py``); worth it on real CT-RATE, where a
            volume takes about 0.6 s to decode. Null: slices are cut from the volumes in memory every time.
        keep_images: each sample's ``meta["image"]`` also holds the PIL image its processor inputs were made from,
            for rollout engines that take raw images (``rl/vllm_rollout.py``).
        seed: seed of the validation split and the training order; null follows the run's ``seed_everything``
            (as does ``synthetic.seed``), so one seed in the config fixes data, sampling and dropout.
        predict_split: the split ``cli.py predict`` answers (``test`` is CT-RATE's valid split).
        annotation: train on one part of the training split only (``AnnotationSubset``): ``annotated``, its
            questions with their reasoning traces, or ``answers_only``, the other patients' questions with their
            reasoning dropped (SFT then teaches ``<answer>…</answer>`` alone; GRPO needs only the answer). Null: the
            whole training split as it is.
        roi_source: where the VQA files' boxes come from (datamodules/roi_sources.py; default lesion masks with
            anatomy for the rest). The VQA files are built with it when ``vqa_dir`` holds none yet; files built
            with another source are refused, so point ``vqa_dir`` at a folder per source.
        protocol: the test split asks a benchmark's questions instead of the VQA file's: ``ctrate_18``, every volume
            about each of the 18 CT-RATE labels (``datamodules/protocol_records.py``; configs/eval_18label.yaml).
        views: candidate views per presence/abnormality question (``datamodules/views.py``: K slices or thin slabs
            from ``roi_source``'s ``propose_many``, in one prompt); built into the VQA files like ``roi_source``, so
            files built with other views are refused. Null: one slice, as always.
        image_condition: show every question another image (the visual-reliance audit, ``evaluation/audit.py``;
            ``datamodules/image_conditions.py``): blank, shuffled, global/outline/zoom only, wrong region, box source.
            Null: the original image.
    """

    def __init__(
        self,
        data_dir: str = "data/synthetic-ctrate",
        processor_path: str = "artifacts/tiny-qwen2.5-vl",
        processor_trust_remote_code: bool = False,
        vqa_dir: str | None = None,
        synthetic: SyntheticData | None = None,
        windows: list[str] | None = None,
        zoom: ZoomSpec | None = None,
        image_size: int = 112,
        prompt_format: PromptFormat = "think",
        system_prompt: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        question_types: list[str] | None = None,
        val_fraction: float = 0.15,
        max_samples: int | None = None,
        max_length: int = 1024,
        shuffle: bool = True,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        skip_bad_samples: bool = False,
        volume_cache_size: int = 64,
        slice_cache_dir: str | None = None,
        keep_images: bool = False,
        seed: int | None = None,
        predict_split: Stage = "test",
        roi_source: ROISource | None = None,
        annotation: AnnotationSubset | None = None,
        protocol: Protocol | None = None,
        image_condition: ImageCondition | None = None,
        views: ViewSpec | None = None,
    ) -> None:
        super().__init__()
        # LightningCLI may hand nested dataclasses over as plain dicts.
        if isinstance(synthetic, dict):
            synthetic = SyntheticData(**synthetic)
        if isinstance(zoom, dict):
            zoom = ZoomSpec(**zoom)
        if isinstance(annotation, dict):
            annotation = AnnotationSubset(**annotation)
        if isinstance(image_condition, dict):
            image_condition = ImageCondition(**image_condition)
        if isinstance(views, dict):
            views = ViewSpec(**views)
        # The source is an object with caches: it lives on the module, not in checkpoints' hyperparameters.
        self.save_hyperparameters(ignore=["roi_source"])
        self.roi_source = roi_source
        self.hparams.synthetic, self.hparams.zoom, self.hparams.annotation = synthetic, zoom, annotation
        self.hparams.image_condition, self.hparams.views = image_condition, views
        self.windows = windows or ["lung"]
        self.datasets: dict[str, CTVQADataset] = {}
        self.processor: Any = None

    @property
    def root(self) -> Path:
        return Path(self.hparams.data_dir)

    @property
    def seed(self) -> int:
        """Seed of the validation split and the training order: ``seed``, else the run's seed_everything."""
        return resolve_seed(self.hparams.seed)

    def prepare_data(self) -> None:
        """Generate the synthetic data set and its VQA files (with ``roi_source``) where missing, and check that
        existing VQA files were built with ``roi_source`` (rank 0 only, by Lightning)."""
        from datamodules.vqa_builder import build_vqa, vqa_state

        synthetic = self.hparams.synthetic
        generate_if_missing(self.root, synthetic)
        if not (self.root / "dataset").is_dir():
            return  # setup() names the missing files
        vqa_dir = self._vqa_dir()
        if vqa_state(vqa_dir, self.roi_source, self.hparams.views) == "built":
            return
        if synthetic is None:
            # Real CT-RATE: hours of work, not for rank 0 of a training job while the other ranks wait.
            spec = without_digests(self.roi_source.describe() if self.roi_source else {})
            source = f" --roi_source '{json.dumps(spec)}'" if spec else ""
            if self.hparams.views is not None and self.hparams.views.active:
                source += f" --views '{json.dumps(asdict(self.hparams.views))}'"
            raise BadSampleError(
                f"{vqa_dir}: no finished CT-RATE-VQA build; build it first:\n"
                f"  python -m datamodules.vqa_builder --root {self.root} --out {vqa_dir}{source}"
            )
        log.info("building CT-RATE-VQA at %s", vqa_dir)
        seed = resolve_seed(synthetic.seed)
        build_vqa(self.root, out_dir=vqa_dir, seed=seed, roi_source=self.roi_source, views=self.hparams.views)

    def _vqa_dir(self) -> Path:
        return Path(self.hparams.vqa_dir) if self.hparams.vqa_dir else self.root / "vqa"

    def _records(self, split: str) -> list[dict[str, Any]]:
        if split == "valid" and self.hparams.protocol is not None:  # the test split (CT-RATE valid)
            protocol = self.hparams.protocol
            return protocol_records(self.root, self._vqa_dir(), split, self.seed, self.roi_source, protocol)
        path = self._vqa_dir() / f"{split}.jsonl"
        records, problems = read_vqa_jsonl(path, skip_bad=self.hparams.skip_bad_samples, split=split)
        if problems:
            log.warning("%s: skipped %d bad line(s); first: %s", path, len(problems), problems[0])
        if self.hparams.question_types:
            records = [r for r in records if r["question_type"] in self.hparams.question_types]
        return records

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train_records = self._records("train")
        val_patients = split_patients([r["patient_id"] for r in train_records], self.hparams.val_fraction, self.seed)
        splits = {
            "train": annotation_part(
                [r for r in train_records if r["patient_id"] not in val_patients],
                self.hparams.annotation,
                self.seed,
                str(self._vqa_dir() / "train.jsonl"),
            ),
            "val": [r for r in train_records if r["patient_id"] in val_patients],
            "test": self._records("valid"),
        }
        metadata = {**read_metadata(self.root, "train"), **read_metadata(self.root, "valid")}
        for name, records in splits.items():
            if self.hparams.max_samples:
                records = records[: self.hparams.max_samples]
            self.datasets[name] = self.dataset_for(records, metadata)
        log.info("CT-VQA samples: %s", {k: len(v) for k, v in self.datasets.items()})

    def dataset_for(
        self, records: list[dict[str, Any]], metadata: dict[str, dict[str, Any]] | None = None
    ) -> CTVQADataset:
        """A dataset of ``records`` with this module's image and prompt settings (also used by ``cli.py ask``
        with no records, to render and encode a user's own volume exactly as in training)."""
        if self.processor is None:
            self.processor = load_processor(self.hparams.processor_path, self.hparams.processor_trust_remote_code)
            check_generation_prompt(self.processor, self.hparams.prompt_format, self.hparams.chat_template_kwargs or {})
        return CTVQADataset(
            records,
            self.root,
            self.processor,
            metadata or {},
            windows=self.windows,
            zoom=self.hparams.zoom,
            image_size=self.hparams.image_size,
            prompt_format=self.hparams.prompt_format,
            system_prompt=self.hparams.system_prompt,
            chat_template_kwargs=self.hparams.chat_template_kwargs,
            max_length=self.hparams.max_length,
            skip_bad_samples=self.hparams.skip_bad_samples,
            volume_cache_size=self.hparams.volume_cache_size,
            keep_images=self.hparams.keep_images,
            slice_cache_dir=self.hparams.slice_cache_dir,
            image_condition=self.hparams.image_condition,
        )

    def _loader(self, split: Stage, shuffle: bool, batch_size: int) -> DataLoader:
        pad_id = self.processor.tokenizer.pad_token_id
        dataset = self.datasets[split]
        if split == "train":
            # Order from (seed, epoch) only, and a resumed fit skips what its checkpoint had trained on.
            sampler = ResumableSampler(dataset, shuffle=shuffle, seed=self.seed)
            sampler.skip = resume_skip(self.trainer, sampler, batch_size)
        else:
            # Evaluation under several processes: every rank needs the same number of batches (sharded forwards
            # run in lockstep), but repeated samples must not count twice in the metrics.
            sampler = EvenEvalSampler(dataset) if world()[0] > 1 else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=VQACollator(pad_token_id=pad_id),
            persistent_workers=self.hparams.num_workers > 0,
            # Worker seeds come from this generator, not the global RNG: creating a loader (a resumed fit makes
            # its loaders at another moment) then never shifts the RNG that dropout draws from.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.shuffle, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, False, self.hparams.eval_batch_size)

    def skipped_samples(self) -> dict[str, list[str]]:
        """Bad samples skipped so far, per split (with ``skip_bad_samples: true``; counted in the main process
        when ``num_workers: 0``, otherwise each worker logs its own skips as they happen)."""
        return {name: list(ds.skipped.values()) for name, ds in self.datasets.items() if ds.skipped}

    def teardown(self, stage: str) -> None:
        """Report the skipped bad samples at the end of the run, so none goes unnoticed."""
        for split, problems in self.skipped_samples().items():
            log.warning("%s: skipped %d bad sample(s):\n  %s", split, len(problems), "\n  ".join(problems))
