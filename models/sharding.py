"""FSDP2 sharding of a VLM for Lightning's ModelParallelStrategy (used from ``configure_model``)."""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from models.families import family_of


def shardable_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Decoder layers and vision blocks: the units FSDP2 gathers one at a time (the family's)."""
    return family_of(model).shardable_blocks(model)


def shard_model(model: torch.nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Apply ``fully_shard`` per decoder layer and vision block, then to the whole model.

    ``param_dtype`` (e.g. bf16) casts gathered parameters for compute while the sharded fp32 masters and the
    gradient reduction stay in fp32. Activation checkpointing is the model's own (``gradient_checkpointing``).
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in shardable_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model
