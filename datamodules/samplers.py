"""Samplers that make data order a function of (seed, epoch, position): resumable mid-epoch and rank-aware."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler


def world() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """This rank's share of a per-epoch seeded permutation (DistributedSampler's), minus a resumed prefix.

    The order of epoch ``e`` depends only on (seed, e): no generator state carries over from epoch to epoch, so a
    run resumed at any epoch sees the order the uninterrupted run saw. ``skip`` drops the first indices of the
    next epoch's share once: the samples the interrupted run had already trained on in that epoch. Lightning calls
    ``set_epoch`` at every epoch start and keeps a DistributedSampler it is given instead of replacing it.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        replicas, rank = world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class EvenEvalSampler(DistributedSampler):
    """DistributedSampler for evaluation that pads with indices past the end instead of repeating indices.

    The dataset maps index ``len + i`` to sample ``i`` flagged ``padding``, so ranks get equal batch counts and
    metrics skip the repeats. Lightning keeps a DistributedSampler it is given instead of replacing it.
    """

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        indices = list(range(self.total_size))  # indices >= len(dataset) are the padding
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def resume_skip(trainer: Any, sampler: ResumableSampler, batch_size: int) -> int:
    """Samples of ``sampler``'s next epoch that the checkpoint being resumed had already trained on (0 when the
    fit is not resuming, or resumes from a checkpoint written after an epoch's last batch: Lightning then starts
    the next epoch). Read from Lightning's restored loop progress while the resumed fit builds its train loader.
    """
    if trainer is None or not trainer.fit_loop.restarting:
        return 0
    skip = trainer.fit_loop.epoch_loop.batch_progress.current.processed * batch_size
    return 0 if skip >= len(sampler) else skip
