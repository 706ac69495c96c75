"""Which kernels PyTorch's scaled-dot-product attention may pick on GPUs (``attn_implementation: sdpa``).

cuDNN attention is left out by default. On an NVIDIA H200 (torch 2.11) it built an execution plan for every new
attention shape: about 3 ms of CPU per forward call and 47 ms per backward call. GRPO changes shapes at every
decode step (the KV cache grows) and every batch (prompt lengths), so a rollout inside a fit took 8.2 s, 1.3 s and
0.85 s on its first three steps with cuDNN, and 1.05 s, 0.54 s and 0.74 s without it (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

SdpaBackend = Literal["flash", "efficient", "cudnn", "math"]
DEFAULT_SDPA_BACKENDS: tuple[SdpaBackend, ...] = ("flash", "efficient", "math")

_ENABLE = {
    "flash": torch.backends.cuda.enable_flash_sdp,
    "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
    "cudnn": torch.backends.cuda.enable_cudnn_sdp,
    "math": torch.backends.cuda.enable_math_sdp,
}


def set_sdpa_backends(backends: Sequence[SdpaBackend] | None = None) -> tuple[SdpaBackend, ...]:
    """Allow exactly ``backends`` (null: ``DEFAULT_SDPA_BACKENDS``) for SDPA in this process; returns them.

    These are torch's process-wide switches, so every module and forward of the process (the reference model,
    recomputation under gradient checkpointing) follows them. PyTorch still picks the fastest allowed kernel
    that supports the call; on CPU its own kernels are used whatever is set here.
    """
    chosen = tuple(DEFAULT_SDPA_BACKENDS if backends is None else backends)
    unknown = sorted(set(chosen) - set(_ENABLE))
    if unknown or not chosen:
        raise ValueError(f"sdpa_backends: {unknown or 'empty'}; choose from {sorted(_ENABLE)}")
    for name, enable in _ENABLE.items():
        enable(name in chosen)
    return chosen
