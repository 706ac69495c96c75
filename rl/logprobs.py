"""Per-token log-probs of a rollout's completions under a model: the policy's (with gradients), and the ones that
stay fixed over the μ updates of a rollout (the rollout policy's, the reference's).

Each prompt and image goes through the model once for its G completions (``rl.grouped_forward.grouped_forward``). With a
``chunk_size`` the (tokens × vocabulary) logits are made a chunk at a time and freed (made again in backward), as
TRL's tiled head: the same log-probs in less memory.
"""

from __future__ import annotations

from typing import Any

import torch

from rl.grouped_forward import chunked_head_logps, grouped_completion_logits, grouped_forward
from rl.loss import token_logps_and_entropy
from rl.sampling import Rollout, eval_mode


def completion_logps(
    model: torch.nn.Module,
    batch: dict[str, Any],
    rollout: Rollout,
    rows: slice,
    temperature: float,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (R, L) of the completions ``rows`` (R of them) under ``softmax(logits / temperature)``, and
    their entropy (R, L) without gradient when ``with_entropy`` (else None). ``chunk_size``: tokens per LM-head
    chunk (None or 0: the whole logits at once)."""
    ids, mask = rollout.completion_ids, rollout.completion_mask
    if not chunk_size:
        logits = grouped_completion_logits(model, batch, ids, mask, rollout.num_generations, rows)
        return token_logps_and_entropy(logits, ids[rows], temperature, with_entropy=with_entropy)
    first_logits, hidden = grouped_forward(model, batch, ids, mask, rollout.num_generations, rows, hidden=True)
    first = token_logps_and_entropy(first_logits, ids[rows][:, :1], temperature, with_entropy=with_entropy)
    if hidden is None:
        return first
    head = model.get_output_embeddings()
    rest = chunked_head_logps(hidden, head, ids[rows][:, 1:], temperature, with_entropy, chunk_size)
    logps = torch.cat([first[0], rest[0]], dim=1)
    return logps, torch.cat([first[1], rest[1]], dim=1) if with_entropy else None


@torch.no_grad()
def fixed_logps(
    model: torch.nn.Module,
    batch: dict[str, Any],
    rollout: Rollout,
    micro_batches: list[slice],
    lockstep_passes: int,
    temperature: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Log-probs (N, L) of all completions, a micro-batch at a time, in eval mode (no dropout) and without
    gradients; then ``lockstep_passes`` discarded forwards, which only keep this rank's sharded forwards in step
    with the other ranks'."""
    with eval_mode(model):
        logps = torch.cat(
            [completion_logps(model, batch, rollout, rows, temperature, chunk_size)[0] for rows in micro_batches]
        )
        for _ in range(lockstep_passes):
            completion_logps(model, batch, rollout, slice(0, 1), temperature, chunk_size)
    return logps
