"""Throughput of the CT-VQA data path, stage by stage, and how long a real SFT fit waits for its data.

    python benchmarks/data_path.py             # stages + SFT fits with num_workers 0, 1, 2 (4 min on 2 quiet cores)
    python benchmarks/data_path.py --quick     # one round, fewer repeats and steps
    python benchmarks/data_path.py --only fits --workers 0 1

(a) Stages, on the synthetic CT-RATE of ``common.prepare()`` (128×128×32 volumes) and on one real-sized
    512×512×160 volume: NIfTI → HU (``load_ct_volume``, cold), a ``VolumeCache`` hit (warm), axial slice, HU
    windowing, zoom-in embedding, resize, a ``SliceCache`` miss and hit, then the processor side (chat template,
    PIL, Qwen's processor, target tokens), and ``CTVQADataset.__getitem__`` + ``VQACollator`` end to end, cold
    (every volume decoded) and warm.
    Each stage runs once at torch's default intra-op threads and once at one thread, each in a fresh process.
(b) Data wait in a real fit: ``SFTModule`` + ``CTVQADataModule`` through a Lightning ``Trainer``; a callback
    records the wall time from the end of one training batch to the start of the next (the fetch, plus
    Lightning's own work between batches) against the whole cycle. ``floor`` is the same fit with every sample
    computed beforehand: Lightning's own gap, which no data-path change can remove. The issue's target: < 10 %.

Absolute numbers move with the load of the machine; the fits of one round run one after the other in fresh
processes, rounds alternate the settings, and the table gives the median over rounds.

What one run on 2 quiet CPU cores showed:

- A warm sample costs 3-4 ms on one core (250-300 samples/s with collate), a third of it Qwen's processor and
  10-15 % the resize; a cold one, decoding its 128×128×32 volume, 12-15 ms.
- A real-sized 512×512×160 volume takes 0.6-0.9 s to decode and 160 MiB as float32 HU, so ``volume_cache_size: 64``
  can hold 10 GiB per worker (each worker has its own cache). On real CT-RATE with shuffled questions the cache
  rarely hits: a worker then delivers about one sample per second, and decoding, not the steps, sets the pace.
  ``slice_cache_dir`` keeps each slice a question uses on disk: the first use decodes (about 0.9 s with the
  write), every later one reads a 512×512 slice in about 0.2 ms.
- Waiting for data: num_workers 0 about 17 % (≈30 ms of data work per batch of 8, between 140-150 ms steps of the
  tiny model), 1 and 2 about 3-4 % (the target is met), Lightning's own gap 1 %. But a worker shares the 2 cores
  with the 2 training threads: steps slow to 180-220 ms, and samples/s is no higher than with num_workers 0.
- On a busy machine every parallel kernel on 2 threads waits for a descheduled thread: a sample took 40-150 ms in
  the main process instead of 3-7 ms on one thread, hence ``one_intra_op_thread`` in ``CTVQADataset.render`` and
  ``encode`` (on a quiet machine the two are within noise of each other).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_datamodule, bench_trainer, machine, measure, prepare, save, table  # noqa: E402

BATCH_SIZE = 8
BIG_SHAPE = (512, 512, 160)  # a CT-RATE volume is 512×512 in-plane with a few hundred slices


def _ms_per_call(fn: Callable[[Any], Any], items: Sequence[Any], reps: int) -> float:
    """Mean milliseconds of ``fn(item)`` over ``items``, ``reps`` passes after one warm-up pass."""
    for item in items:
        fn(item)
    start = time.perf_counter()
    for _ in range(reps):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (reps * len(items)) * 1e3


def _dataset(data_dir: Path, model_dir: Path, num_workers: int = 0) -> Any:
    return bench_datamodule(model_dir, data_dir, BATCH_SIZE, num_workers=num_workers)


def big_volume(data_dir: Path, meta: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """One synthetic volume upsampled to ``BIG_SHAPE`` (stored like raw CT-RATE: int16 + intercept), written once,
    with its metadata row (spacing scaled so the geometry stays a chest)."""
    import nibabel as nib

    from datamodules.ctrate import CTRATEPaths

    path = data_dir.parent / "big-volume" / "train_9999_a_1.nii.gz"
    factors = [b // s for b, s in zip(BIG_SHAPE, (128, 128, 32), strict=True)]
    big_meta = {**meta, "VolumeName": path.name, "XYSpacing": "[0.625, 0.625]", "ZSpacing": 5.0 / factors[2]}
    if not path.is_file():
        image = nib.load(CTRATEPaths(data_dir).volume(meta["VolumeName"]))
        raw = np.asarray(image.dataobj)
        for axis, f in enumerate(factors):
            raw = np.repeat(raw, f, axis=axis)
        # Noise as in a real scan, so gzip works as hard as on real data (a blocky volume compresses too well).
        raw = raw + np.random.default_rng(0).integers(-20, 21, size=raw.shape, dtype=np.int16)
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(raw.astype(np.int16), np.eye(4)), path)
    return path, big_meta


def slice_cache_times(
    data_dir: Path, path: Path, meta: dict[str, Any], volume: Any, ks: list[int], reps: int
) -> dict[str, float]:
    """``SliceCache`` on the big volume: a miss (decode, cut, write the slice) and a hit (read the slice)."""
    import shutil

    from datamodules.ctrate import VolumeCache, axial_slice, load_ct_volume
    from datamodules.slice_cache import SliceCache

    class BigVolume(VolumeCache):  # the big volume lives outside the CT-RATE layout
        def path(self, volume_name: str) -> Path:
            return path

    cache_dir = data_dir.parent / "big-volume-slices"
    shutil.rmtree(cache_dir, ignore_errors=True)
    slices = SliceCache(cache_dir, BigVolume(data_dir, 0))
    start = time.perf_counter()  # once, with no warm-up: a second call would be a hit
    slices.get(path.name, meta, ks[0], lambda: axial_slice(load_ct_volume(path, meta), ks[0]))
    miss = (time.perf_counter() - start) * 1e3
    for k in ks[1:]:
        slices.get(path.name, meta, k, lambda k=k: axial_slice(volume, k))

    def never(k: int) -> Any:
        raise AssertionError(f"slice {k} was not cached")

    hit = _ms_per_call(lambda k: slices.get(path.name, meta, k, lambda: never(k)), ks, reps)
    return {"slice cache miss (decode, cut, write)": miss, "slice cache hit (read the slice)": hit}


def stage_times(data_dir: Path, model_dir: Path, threads: int | None, reps: int) -> dict[str, Any]:
    """Per-stage milliseconds on every training record (small volumes) and on the big volume."""
    import torch

    from datamodules.collate import VQACollator
    from datamodules.ctrate import VolumeCache, axial_slice, load_ct_volume
    from datamodules.prompts import build_messages, target_text
    from datamodules.transforms import to_pil

    if threads:
        torch.set_num_threads(threads)
    dm = _dataset(data_dir, model_dir)
    dm.setup("fit")
    ds = dm.datasets["train"]
    records, processor = ds.records, ds.processor
    window, zoom, resize = ds.renderer.transform.transforms
    paths = ds.renderer.volumes.paths["train"]
    names = sorted({r["volume_name"] for r in records})
    ms: dict[str, float] = {}

    ms["load NIfTI → HU (cold)"] = _ms_per_call(lambda n: load_ct_volume(paths.volume(n), ds.metadata[n]), names, 1)
    for n in names:
        ds.renderer.volumes.get(n, ds.metadata[n])
    ms["VolumeCache hit (warm)"] = _ms_per_call(lambda n: ds.renderer.volumes.get(n, ds.metadata[n]), names, reps * 20)
    volumes = {n: ds.renderer.volumes.get(n, ds.metadata[n]) for n in names}
    ms["axial slice"] = _ms_per_call(lambda r: axial_slice(volumes[r["volume_name"]], r["slice_index"]), records, reps)
    slices = [
        {"image": torch.as_tensor(axial_slice(volumes[r["volume_name"]], r["slice_index"])), "roi": r["roi"]}
        for r in records
    ]
    ms["HU windowing"] = _ms_per_call(window, slices, reps)
    windowed = [window(d) for d in slices]
    ms["zoom-in embedding"] = _ms_per_call(zoom, windowed, reps)
    zoomed = [zoom(d) for d in windowed]
    ms["resize"] = _ms_per_call(resize, zoomed, reps)
    images = [ds.image(r) for r in records]
    ms["to PIL"] = _ms_per_call(to_pil, images, reps)
    messages = [build_messages(r["question"], r["options"], ds.system_prompt) for r in records]
    ms["chat template"] = _ms_per_call(
        lambda m: processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False), messages, reps
    )
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    pils = [to_pil(i) for i in images]
    pairs = list(zip(prompts, pils, strict=True))
    ms["processor (image processor + tokenizer)"] = _ms_per_call(
        lambda p: processor(text=[p[0]], images=[p[1]], return_tensors="pt"), pairs, reps
    )
    ms["  of which image processor"] = _ms_per_call(
        lambda p: processor.image_processor(images=[p], return_tensors="pt"), pils, reps
    )
    targets = [target_text(r["reasoning"], r["answer"], ds.prompt_format) + ds.end_of_turn for r in records]
    ms["target tokens"] = _ms_per_call(
        lambda t: processor.tokenizer(t, add_special_tokens=False)["input_ids"], targets, reps
    )
    indices = list(range(len(ds)))
    ms["__getitem__ (warm)"] = _ms_per_call(ds.__getitem__, indices, reps)
    with _pool_threads():
        ms["__getitem__ (warm), on torch's pool (before)"] = _ms_per_call(ds.__getitem__, indices, reps)
    collate = VQACollator(pad_token_id=processor.tokenizer.pad_token_id)
    batches = [indices[i : i + BATCH_SIZE] for i in range(0, len(indices), BATCH_SIZE)]
    samples = [[ds[i] for i in b] for b in batches]
    ms["collate (per sample)"] = _ms_per_call(collate, samples, reps) / BATCH_SIZE
    ms["__getitem__ + collate (warm)"] = _ms_per_call(lambda b: collate([ds[i] for i in b]), batches, reps) / BATCH_SIZE
    warm_cache = ds.renderer.volumes
    ds.renderer.volumes = VolumeCache(data_dir, 0)  # size 0: every sample decodes its volume
    ms["__getitem__ + collate (cold)"] = _ms_per_call(lambda b: collate([ds[i] for i in b]), batches, 1) / BATCH_SIZE
    ds.renderer.volumes = warm_cache

    path, meta = big_volume(data_dir, ds.metadata[names[0]])
    big: dict[str, float] = {}
    big["load NIfTI → HU (cold)"] = _ms_per_call(lambda p: load_ct_volume(p, meta), [path], 1)
    volume = load_ct_volume(path, meta)
    ks = list(range(0, volume.shape[-1], 4))
    big["axial slice"] = _ms_per_call(lambda k: axial_slice(volume, k), ks, reps)
    big_slices = [{"image": torch.as_tensor(axial_slice(volume, k)), "roi": [[280, 300, 300, 320]]} for k in ks]
    big["HU windowing"] = _ms_per_call(window, big_slices, reps)
    big_windowed = [window(d) for d in big_slices]
    big["zoom-in embedding"] = _ms_per_call(zoom, big_windowed, reps)
    big["resize"] = _ms_per_call(resize, [zoom(d) for d in big_windowed], reps)
    big.update(slice_cache_times(data_dir, path, meta, volume, ks, reps))
    return {
        "threads": torch.get_num_threads(),
        "samples": len(records),
        "volumes": len(names),
        "ms": ms,
        "big_ms": big,
        "big_volume_mib": volume.numel() * volume.element_size() / 2**20,
    }


class _Materialized:
    """Samples computed beforehand: a fit that costs nothing to feed shows Lightning's own gap between batches."""

    def __init__(self, dataset: Any) -> None:
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.skipped: dict[str, str] = {}  # read by CTVQADataModule.teardown

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]


@contextlib.contextmanager
def _pool_threads() -> Iterator[None]:
    """Samples made on torch's whole intra-op pool inside the block, as before ``one_intra_op_thread`` (baseline)."""
    from datamodules import vqa_dataset

    one_thread = vqa_dataset.one_intra_op_thread
    vqa_dataset.one_intra_op_thread = contextlib.nullcontext
    try:
        yield
    finally:
        vqa_dataset.one_intra_op_thread = one_thread


def fit_wait(
    data_dir: Path,
    model_dir: Path,
    num_workers: int,
    steps: int,
    floor: bool = False,
    pool_threads: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """A short SFT fit; per training batch, the wall time waiting before it and the time it took.

    ``pool_threads``: samples made on torch's whole intra-op pool, as before ``one_intra_op_thread`` (the baseline).
    ``threads``: torch intra-op threads of the training process (default: torch's, one per core).
    """
    import multiprocessing

    import lightning as L
    import torch

    from lightning_modules.sft import SFTModule

    # This process was spawned by common.measure, which makes spawn its children's default too; `cli.py fit` forks
    # its DataLoader workers (Linux default), so fork here as well.
    multiprocessing.set_start_method("fork", force=True)
    if threads:
        torch.set_num_threads(threads)
    if pool_threads:
        _pool_threads().__enter__()  # for the whole life of this process

    class BatchClock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_train_batch_start(self, *_: Any) -> None:
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, *_: Any) -> None:
            self.ends.append(time.perf_counter())

    L.seed_everything(0, verbose=False)
    dm = _dataset(data_dir, model_dir, num_workers)
    if floor:
        dm.setup("fit")  # setup() keeps datasets once built: swap in the precomputed samples
        dm.datasets["train"] = _Materialized(dm.datasets["train"])
    clock = BatchClock()
    trainer = bench_trainer(steps, [clock])
    module = SFTModule(model_path=str(model_dir), build_embedded_if_missing=False, warmup_steps=5)
    fit_start = time.perf_counter()
    trainer.fit(module, dm)
    starts, ends = np.array(clock.starts), np.array(clock.ends)
    return {
        "first_wait_s": float(starts[0] - fit_start),  # set-up, worker start, first batch: paid once per fit
        "wait_s": (starts[1:] - ends[:-1]).tolist(),
        "step_s": (ends - starts).tolist(),
    }


def summarize(runs: list[dict[str, Any]], skip: int) -> dict[str, float]:
    """Median over rounds of the wait fraction and per-step times, after ``skip`` warm-up batches."""
    fractions, waits, steps = [], [], []
    for run in runs:
        wait, step = np.array(run["wait_s"][skip:]), np.array(run["step_s"][skip + 1 :])
        fractions.append(wait.sum() / (wait.sum() + step.sum()))
        waits.append(wait.mean() * 1e3)
        steps.append(step.mean() * 1e3)
    return {
        "wait_fraction": statistics.median(fractions),
        "wait_ms": statistics.median(waits),
        "step_ms": statistics.median(steps),
        "samples_per_s": BATCH_SIZE / (statistics.median(waits) + statistics.median(steps)) * 1e3,
        "first_wait_s": statistics.median(r["first_wait_s"] for r in runs),
        "fractions": fractions,
    }


def report_stages(data_dir: Path, model_dir: Path, reps: int) -> dict[str, Any]:
    """Measure and print the per-stage tables (torch's default threads and one thread, each in a fresh process)."""
    stages = {
        label: measure(stage_times, data_dir=data_dir, model_dir=model_dir, threads=threads, reps=reps)
        for label, threads in (("default", None), ("1 thread", 1))
    }
    default, single = stages["default"], stages["1 thread"]
    header = ["stage", f"ms ({default['threads']} threads)", "per s", "ms (1 thread)", "per s (1 thread)"]
    small = f"{default['samples']} samples, {default['volumes']} volumes 128×128×32"
    big = f"one {'×'.join(map(str, BIG_SHAPE))} volume, {default['big_volume_mib']:.0f} MiB as HU"
    for title, key in ((f"Data path, synthetic CT-RATE ({small})", "ms"), (f"Data path, {big}", "big_ms")):
        rows = [
            [stage, default[key][stage], 1e3 / default[key][stage], single[key][stage], 1e3 / single[key][stage]]
            for stage in default[key]
        ]
        print(table(title, header, rows))
    print(
        "per s: volumes/s for loads, samples/s for __getitem__ (+ collate), calls/s otherwise. Cold: every sample "
        "decodes its volume; warm: VolumeCache hits. __getitem__ renders and encodes on one thread "
        "(one_intra_op_thread) in both columns, except in the 'before' row.\n"
    )
    return stages


def report_fits(
    data_dir: Path, model_dir: Path, workers: list[int], steps: int, rounds: int, skip: int
) -> dict[str, Any]:
    """Run and print the SFT fits: floor, num_workers=0 before the fix, then each of ``workers``."""
    settings = [("floor", {"num_workers": 0, "floor": True})]
    settings.append(("num_workers=0, pool threads (before)", {"num_workers": 0, "pool_threads": True}))
    settings += [(f"num_workers={w}", {"num_workers": w}) for w in workers]
    settings += [(f"num_workers={w}, 1 training thread", {"num_workers": w, "threads": 1}) for w in workers[:2]]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in settings}
    for _ in range(rounds):
        for name, kwargs in settings:
            runs[name].append(measure(fit_wait, data_dir=data_dir, model_dir=model_dir, steps=steps, **kwargs))
    summary = {name: summarize(r, skip) for name, r in runs.items()}
    rows = [
        [name, s["step_ms"], s["wait_ms"], f"{s['wait_fraction']:.1%}", s["samples_per_s"], s["first_wait_s"]]
        for name, s in summary.items()
    ]
    title = f"Waiting for data in an SFT fit (batch {BATCH_SIZE}, {steps} steps, median of {rounds} round(s))"
    print(table(title, ["setting", "step ms", "wait ms", "wait fraction", "samples/s", "first batch s"], rows))
    print(
        "wait: end of one training batch to the start of the next (fetch + Lightning's hooks); fraction: wait / "
        f"(wait + step), leaving out the first {skip} batches; floor: precomputed samples, num_workers=0; "
        "first batch: from fit() to the first batch (set-up, worker start).\n"
    )
    return {"summary": summary, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers of the fits")
    parser.add_argument("--steps", type=int, default=24, help="training steps per fit (an epoch is 21)")
    parser.add_argument("--rounds", type=int, default=2, help="fits per setting, interleaved")
    parser.add_argument("--reps", type=int, default=2, help="passes over the records per stage")
    parser.add_argument("--skip", type=int, default=3, help="warm-up batches left out of the wait fraction")
    parser.add_argument("--quick", action="store_true", help="1 round, 12 steps, 1 pass per stage")
    parser.add_argument("--only", choices=["stages", "fits"], help="run one part (the JSON holds only that part)")
    parser.add_argument("--out", default="runs/bench/data_path.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.reps = 1, 12, 1
    model_dir, data_dir = prepare()
    print(machine())
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    if args.only != "fits":
        results["stages"] = report_stages(data_dir, model_dir, args.reps)
    if args.only != "stages":
        results["fits"] = report_fits(data_dir, model_dir, args.workers, args.steps, args.rounds, args.skip)
    save(results, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
