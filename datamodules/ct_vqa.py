"""CT-VQA LightningDataModule: CT-RATE volumes + VQA JSONL → zoom-embedded images → Qwen2.5-VL chat batches."""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from monai.transforms import Compose, Resized
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.collate import VQACollator
from datamodules.ctrate import BadSampleError, CTRATEPaths, VolumeCache, axial_slice, read_metadata
from datamodules.prompts import PromptFormat, build_messages, system_prompt_for, target_text
from datamodules.roi_sources import ROISource
from datamodules.samplers import EvenEvalSampler, ResumableSampler, resume_skip, world
from datamodules.seeding import resolve_seed
from datamodules.slice_cache import SliceCache
from datamodules.transforms import HUWindowd, ZoomEmbedd, to_pil
from datamodules.vqa_records import read_vqa_jsonl

log = logging.getLogger(__name__)

Stage = Literal["train", "val", "test"]


@dataclass
class SyntheticData:
    """Generate a synthetic CT-RATE (and its VQA files) at `data_dir` when the directory is missing."""

    n: int = 240
    seed: int | None = None  # None: the run's seed_everything
    scanner: Literal["A", "B"] = "A"  # B: the shifted scanner (datamodules/synthetic_ctrate.py SCANNERS)


@dataclass
class AnnotationSubset:
    """One part of the training split, divided by patient for the annotation-efficiency experiment: the
    ``annotated`` patients' questions keep their reasoning traces, the ``answers_only`` ones' keep only their answers.

    The division is a seeded shuffle of the sorted training patients (the datamodule's seed), so the two parts of one
    seed are disjoint and together are the training split; validation and test are never divided.
    """

    part: Literal["annotated", "answers_only"]
    fraction: float = 0.2  # share of training patients whose questions keep their reasoning traces

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"annotation.fraction {self.fraction} is not strictly between 0 and 1")
        if self.part not in ("annotated", "answers_only"):
            raise ValueError(f"annotation.part {self.part!r} is not 'annotated' or 'answers_only'")


@dataclass
class ZoomSpec:
    """Zoom-in embedding settings (see datamodules/transforms.py:ZoomEmbedd)."""

    layout: Literal["inset", "side_by_side"] = "inset"
    margin: float = 0.5
    inset_fraction: float = 0.5


def generate_if_missing(root: Path, synthetic: SyntheticData | None) -> None:
    """Write a synthetic CT-RATE at ``root`` when ``synthetic`` is set and ``root`` holds no ``dataset/`` yet.

    Raises ``BadSampleError`` when ``root`` already holds a synthetic set of another scanner, naming the metadata
    CSV line: a scanner-B run pointed at a scanner-A folder would otherwise test on the wrong scanner unawares.
    """
    if synthetic is None:
        return
    from datamodules.synthetic_ctrate import SCANNERS, generate

    if (root / "dataset").is_dir():
        path = CTRATEPaths(root, "train").metadata_csv
        if path.is_file():
            makers = {s.manufacturer: name for name, s in SCANNERS.items()}
            with path.open(encoding="utf-8") as f:
                row = next(csv.DictReader(f), {})
            found = makers.get(row.get("Manufacturer", ""))
            if found is not None and found != synthetic.scanner:
                raise BadSampleError(
                    f"{path.name}:2: field 'Manufacturer': {row['Manufacturer']!r} is scanner {found}'s, but "
                    f"synthetic.scanner is {synthetic.scanner!r}; point data_dir at a folder per scanner"
                )
        return
    log.info("generating synthetic CT-RATE (scanner %s) at %s", synthetic.scanner, root)
    generate(root, n=synthetic.n, seed=resolve_seed(synthetic.seed), scanner=synthetic.scanner)


# Saved in checkpoints' hyperparameters: allow them under torch.load(weights_only=True) when resuming.
torch.serialization.add_safe_globals([SyntheticData, ZoomSpec, AnnotationSubset])


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Torch ops on one thread inside the block, as in a DataLoader worker (which sets this for its whole life).

    Rendering and encoding a sample use it wherever they run (main process with ``num_workers: 0``, ``cli.py ask``):
    bilinear resizing rounds differently on one thread and on several (by one float ulp, sometimes a grey level
    after quantisation), so without it an image depended on num_workers and on the machine's cores. It is also
    faster: a sample's tensors (a 3×112×112 image) are too small to gain from parallel kernels, and every parallel
    kernel waits for all threads of the pool, which on a busy machine made a sample 10-30× slower
    (benchmarks/data_path.py). Decoding a volume, large enough to gain, keeps the pool.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CTVQADataset(Dataset):
    """One VQA record → processor inputs for its zoom-embedded slice, plus the SFT target ids.

    Decoded volumes are kept in a small LRU cache because several questions share one volume.
    """

    def __init__(
        self,
        records: list[dict[str, Any]],
        root: Path,
        processor: Any,
        metadata: dict[str, dict[str, Any]],
        windows: Sequence[str],
        zoom: ZoomSpec | None,
        image_size: int,
        prompt_format: PromptFormat,
        system_prompt: str | None,
        max_length: int,
        skip_bad_samples: bool,
        volume_cache_size: int,
        keep_images: bool = False,
        slice_cache_dir: str | Path | None = None,
    ) -> None:
        self.records = records
        self.keep_images = keep_images
        self.processor = processor
        self.metadata = metadata
        self.prompt_format = prompt_format
        self.system_prompt = system_prompt or system_prompt_for(prompt_format, zoom.layout if zoom else "none")
        self.max_length = max_length
        self.skip_bad_samples = skip_bad_samples
        self.volumes = VolumeCache(root, volume_cache_size)
        self.slice_cache = SliceCache(slice_cache_dir, self.volumes) if slice_cache_dir else None
        self.skipped: dict[str, str] = {}  # record id -> problem; a dict so later epochs don't recount
        steps: list[Any] = [HUWindowd(keys="image", windows=list(windows))]
        if zoom is not None:
            steps.append(
                ZoomEmbedd(
                    keys="image",
                    box_key="roi",
                    layout=zoom.layout,
                    margin=zoom.margin,
                    inset_fraction=zoom.inset_fraction,
                )
            )
        steps.append(Resized(keys="image", spatial_size=image_size, size_mode="longest", mode="bilinear"))
        self.transform = Compose(steps)
        self.end_of_turn = processor.tokenizer.eos_token or "<|im_end|>"

    def __len__(self) -> int:
        return len(self.records)

    def image(self, record: dict[str, Any]) -> torch.Tensor:
        """The (3, H, W) image in [0, 1] the model sees for this record (also used to save what it saw)."""
        hu = self.hu_slice(record)
        height, width = hu.shape
        for box in record["roi"]:
            if box[2] > width or box[3] > height:
                raise BadSampleError(
                    f"{record['_where']}: field 'roi' {box} is outside the {width}×{height} slice "
                    f"of {record['volume_name']}"
                )
        return self.render(hu, record["roi"])

    def hu_slice(self, record: dict[str, Any]) -> np.ndarray:
        """The record's axial slice in HU: from the slice cache on disk when there is one, else cut from its
        (memory-cached) volume."""
        name = record["volume_name"]
        meta = self.metadata.get(name)
        if self.slice_cache is None:
            return self._cut(record, meta)
        return self.slice_cache.get(name, meta, record["slice_index"], lambda: self._cut(record, meta))

    def _cut(self, record: dict[str, Any], meta: dict[str, Any] | None) -> np.ndarray:
        volume = self.volumes.get(record["volume_name"], meta)
        depth = volume.shape[-1]
        if not 0 <= record["slice_index"] < depth:
            raise BadSampleError(
                f"{record['_where']}: field 'slice_index' {record['slice_index']} is outside the volume's "
                f"{depth} slices ({record['volume_name']})"
            )
        return axial_slice(volume, record["slice_index"])

    def render(self, slice_hu: np.ndarray, roi: list[list[int]]) -> torch.Tensor:
        """An axial HU slice and its ROI boxes → the windowed, zoom-embedded, resized (3, H, W) image in [0, 1]."""
        with one_intra_op_thread():
            data = self.transform({"image": torch.as_tensor(np.asarray(slice_hu, dtype=np.float32)), "roi": roi})
            # A plain tensor: Resized returns a MetaTensor, whose every later op (here, to_pil) pays for bookkeeping
            # of metadata that the 2D image does not use (a tenth of a sample's time; same values).
            return convert_to_tensor(data["image"], track_meta=False).float().clamp(0, 1)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        # Indices past the end are padding from EvenEvalSampler: a repeat, flagged so metrics skip it.
        record = self.records[index % len(self.records)]
        try:
            sample = self._encode(record)
            sample["meta"]["padding"] = index >= len(self.records)
            return sample
        except BadSampleError as e:
            if not self.skip_bad_samples:
                raise
            if record["id"] not in self.skipped:
                log.warning("skipping bad sample: %s", e)
            self.skipped[record["id"]] = str(e)
            return None

    def _encode(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.encode(record, self.image(record))

    def encode(self, record: dict[str, Any], image: torch.Tensor) -> dict[str, Any]:
        """Processor inputs for a record's question and the image shown with it, plus the SFT target ids."""
        messages = build_messages(record["question"], record["options"], self.system_prompt)
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pil = to_pil(image)
        with one_intra_op_thread():
            enc = self.processor(text=[prompt], images=[pil], return_tensors="pt")
        target = target_text(record["reasoning"], record["answer"], self.prompt_format) + self.end_of_turn
        target_ids = self.processor.tokenizer(target, add_special_tokens=False)["input_ids"]
        prompt_ids = enc["input_ids"][0]
        # Cutting the prompt would cut through image tokens or the question, and cutting the target would teach an
        # answer without its </think>, <answer> or end of turn: refuse either instead.
        if len(prompt_ids) >= self.max_length:
            raise BadSampleError(
                f"{record['_where']}: prompt is {len(prompt_ids)} tokens, over max_length={self.max_length}"
            )
        if len(prompt_ids) + len(target_ids) > self.max_length:
            raise BadSampleError(
                f"{record['_where']}: prompt + target is {len(prompt_ids) + len(target_ids)} tokens, "
                f"over max_length={self.max_length}"
            )
        meta = {
            **{k: record[k] for k in ("id", "question_type", "question", "answer", "options", "volume_name")},
            "abnormality": record.get("abnormality"),  # the label a presence question asks about
            "reasoning": record["reasoning"],  # reference reasoning, for BLEU / ROUGE-L at test time
            "prompt_format": self.prompt_format,  # rewards check the completion against the format asked for
        }
        if self.keep_images:
            meta["image"] = pil
        return {
            "prompt_ids": prompt_ids,
            "mm_token_type_ids": enc["mm_token_type_ids"][0],
            "pixel_values": enc["pixel_values"],
            "image_grid_thw": enc["image_grid_thw"],
            "target_ids": torch.tensor(target_ids, dtype=torch.long),
            "meta": meta,
        }


def _split_patients(patients: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The first ``val_fraction`` of a seeded shuffle of the sorted ids (at least one when the fraction is positive),
    so the split is stable across runs: validation patients, or the annotated ones of the training split."""
    ordered = sorted(set(patients))
    random.Random(seed).shuffle(ordered)
    n_val = max(1, round(len(ordered) * val_fraction)) if val_fraction > 0 else 0
    return set(ordered[:n_val])


class CTVQADataModule(L.LightningDataModule):
    """CT-RATE-VQA for training (CT-RATE train split, divided by patient into train/val) and test (CT-RATE valid).

    Args:
        data_dir: CT-RATE root (the folder holding ``dataset/``), real or synthetic.
        processor_path: model directory whose processor renders prompts and images (linked to the model's path).
        vqa_dir: folder with ``train.jsonl`` and ``valid.jsonl``; default ``data_dir/vqa``.
        synthetic: if set and ``data_dir`` is missing, a synthetic CT-RATE and its VQA files are generated there.
        windows: CT windows (lung, mediastinal, bone); one → grey, three → RGB.
        zoom: zoom-in embedding settings, or null for the plain global image (ablation).
        image_size: longest side of the image given to the processor (pixels).
        prompt_format: ``think`` (<think>…</think><answer>…</answer>) or ``no_think`` (<answer> only).
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
            for rollout engines that take raw images (``lightning_modules/vllm_rollout.py``).
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
    """

    def __init__(
        self,
        data_dir: str = "data/synthetic-ctrate",
        processor_path: str = "artifacts/tiny-qwen2.5-vl",
        vqa_dir: str | None = None,
        synthetic: SyntheticData | None = None,
        windows: list[str] | None = None,
        zoom: ZoomSpec | None = None,
        image_size: int = 112,
        prompt_format: PromptFormat = "think",
        system_prompt: str | None = None,
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
    ) -> None:
        super().__init__()
        # LightningCLI may hand nested dataclasses over as plain dicts.
        if isinstance(synthetic, dict):
            synthetic = SyntheticData(**synthetic)
        if isinstance(zoom, dict):
            zoom = ZoomSpec(**zoom)
        if isinstance(annotation, dict):
            annotation = AnnotationSubset(**annotation)
        # The source is an object with caches: it lives on the module, not in checkpoints' hyperparameters.
        self.save_hyperparameters(ignore=["roi_source"])
        self.roi_source = roi_source
        self.hparams.synthetic, self.hparams.zoom, self.hparams.annotation = synthetic, zoom, annotation
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
        if vqa_state(vqa_dir, self.roi_source) == "built":
            return
        if synthetic is None:
            # Real CT-RATE: hours of work, not for rank 0 of a training job while the other ranks wait.
            spec = {
                k: v
                for k, v in (self.roi_source.describe() if self.roi_source else {}).items()
                if k != "checkpoint_sha256"
            }
            source = f" --roi_source '{json.dumps(spec)}'" if spec else ""
            raise BadSampleError(
                f"{vqa_dir}: no finished CT-RATE-VQA build; build it first:\n"
                f"  python -m datamodules.vqa_builder --root {self.root} --out {vqa_dir}{source}"
            )
        log.info("building CT-RATE-VQA at %s", vqa_dir)
        build_vqa(self.root, out_dir=vqa_dir, seed=resolve_seed(synthetic.seed), roi_source=self.roi_source)

    def _vqa_dir(self) -> Path:
        return Path(self.hparams.vqa_dir) if self.hparams.vqa_dir else self.root / "vqa"

    def _records(self, split: str) -> list[dict[str, Any]]:
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
        val_patients = _split_patients([r["patient_id"] for r in train_records], self.hparams.val_fraction, self.seed)
        splits = {
            "train": self._annotation_part([r for r in train_records if r["patient_id"] not in val_patients]),
            "val": [r for r in train_records if r["patient_id"] in val_patients],
            "test": self._records("valid"),
        }
        metadata = {**read_metadata(self.root, "train"), **read_metadata(self.root, "valid")}
        for name, records in splits.items():
            if self.hparams.max_samples:
                records = records[: self.hparams.max_samples]
            self.datasets[name] = self.dataset_for(records, metadata)
        log.info("CT-VQA samples: %s", {k: len(v) for k, v in self.datasets.items()})

    def _annotation_part(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The training records of ``annotation``'s part (all of them when it is null); ``answers_only`` ones are
        copies with an empty reasoning. Raises ``BadSampleError`` when the part would hold no patient."""
        spec = self.hparams.annotation
        if spec is None:
            return records
        patients = sorted({r["patient_id"] for r in records})
        annotated = _split_patients(patients, spec.fraction, self.seed)
        keep = [r for r in records if (r["patient_id"] in annotated) == (spec.part == "annotated")]
        if not keep:
            raise BadSampleError(
                f"{self._vqa_dir() / 'train.jsonl'}: annotation.fraction={spec.fraction} leaves no {spec.part} "
                f"patient among the {len(patients)} training patients"
            )
        log.info(
            "annotation %s: %d of %d training patients", spec.part, len({r["patient_id"] for r in keep}), len(patients)
        )
        if spec.part == "answers_only":
            keep = [{**r, "reasoning": ""} for r in keep]
        return keep

    def dataset_for(
        self, records: list[dict[str, Any]], metadata: dict[str, dict[str, Any]] | None = None
    ) -> CTVQADataset:
        """A dataset of ``records`` with this module's image and prompt settings (also used by ``cli.py ask``
        with no records, to render and encode a user's own volume exactly as in training)."""
        if self.processor is None:
            from lightning_modules.model_loading import load_processor

            self.processor = load_processor(self.hparams.processor_path)
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
            max_length=self.hparams.max_length,
            skip_bad_samples=self.hparams.skip_bad_samples,
            volume_cache_size=self.hparams.volume_cache_size,
            keep_images=self.hparams.keep_images,
            slice_cache_dir=self.hparams.slice_cache_dir,
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
