"""The grouped training forward: logits (or final hidden states) predicting each completion token of a rollout,
with gradients, each prompt and its image run once for its G completions, as in sampling (``grouped_forward``);
the one-row-per-completion forward it is held to (``completion_logits``); and the LM head chunked over tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from datamodules.collate import prompt_inputs
from models.families import family_of
from rl.prompt_batch import (
    completion_positions,
    prompt_keys,
    prompt_positions,
    select_rows,
    with_completions,
)
from rl.sampling import model_cache


def completion_logits(
    model: torch.nn.Module,
    prompts: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits predicting each completion token, (N, L, V), from one forward pass over prompt + completion.

    ``prompts`` holds one row per completion (``repeat_prompts``) with its images: the layout TRL trains on.
    GRPO uses ``grouped_completion_logits``, the same logits for less; this is the reference the tests hold it to.
    """
    positions, next_position = prompt_positions(model, prompts)
    length = completion_ids.size(1)
    out = model(
        **with_completions(prompts, completion_ids, completion_mask),
        position_ids=torch.cat([positions, completion_positions(positions, next_position, length)], dim=-1),
        use_cache=False,
        logits_to_keep=length + 1,
    )
    return out.logits[:, :-1]


def checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of ``model`` that gradient checkpointing would replay in a forward now (none without grad)."""
    if not torch.is_grad_enabled():
        return []
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) and m.training]


@contextmanager
def checkpoint_with_cache(layers: list[torch.nn.Module]) -> Iterator[None]:
    """Let these checkpointed layers take a cache for the block (transformers drops it otherwise); only sound
    with ``models.cache_layers`` caches, which a replay does not change."""
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # back to the class's False


def grouped_completion_logits(
    model: torch.nn.Module,
    batch: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    num_generations: int,
    rows: slice = slice(None),
) -> torch.Tensor:
    """Logits predicting each completion token of rollout rows ``rows``, (n, L, V), each prompt run only once
    (``grouped_forward``)."""
    first_logits, rest = grouped_forward(model, batch, completion_ids, completion_mask, num_generations, rows)
    return first_logits if rest is None else torch.cat([first_logits, rest], dim=1)


def grouped_forward(
    model: torch.nn.Module,
    batch: dict[str, Any],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    num_generations: int,
    rows: slice = slice(None),
    hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits predicting the first completion token of rollout rows ``rows``, (n, 1, V), and what predicts
    the others, (n, L - 1, ·): their logits, or with ``hidden`` the final hidden states the LM head would turn
    into them (for ``chunked_head_logps``, which never holds all the logits at once); None when L = 1.

    The same numbers as ``completion_logits`` on ``repeat_prompts`` rows (to float tolerance), but a prompt and its
    image go through the vision tower and the decoder once, not once per completion: the prompt's KV cache is
    indexed out to the rows of its completions, as in sampling, and gradients flow back through that indexing.
    The prompt is most of each row (image tokens, system prompt, question), so this is most of the training forward.
    Under gradient checkpointing the caches are replay-safe (``models.cache_layers``): the backward replay of a layer
    reads them without changing them, so checkpointed layers keep them (same logits and gradients as without).
    The model's family (``models/families``) says how its prompt cache is recorded and indexed.
    """
    g = num_generations
    start, stop, _ = rows.indices(completion_ids.size(0))
    family = family_of(model)
    first, last = start // g, (stop - 1) // g + 1  # the prompts these rows belong to (a slice may cut a group)
    prompts = select_rows({key: batch[key] for key in prompt_keys(batch)}, slice(first, last))
    positions, next_position = prompt_positions(model, prompts)
    layers = checkpointed_layers(model)
    checkpointing = bool(layers)
    with checkpoint_with_cache(layers):
        out = model(
            **prompt_inputs(prompts),
            position_ids=positions,
            cache=family.prompt_cache(model, checkpointing),
            use_cache=True,
            logits_to_keep=1,
        )
        owner = torch.arange(start, stop, device=completion_ids.device) // g - first  # each row's prompt
        first_logits = out.logits[owner]  # the prompt's last position predicts the first completion token
        ids, mask = completion_ids[start:stop, :-1], completion_mask[start:stop, :-1]
        if ids.size(1) == 0:
            return first_logits, None
        cache = family.completion_cache(model_cache(out), owner, checkpointing)
        out = model(
            input_ids=ids,  # the last token predicts nothing that is scored
            attention_mask=torch.cat([prompts["prompt_attention_mask"][owner], mask], dim=1),
            position_ids=completion_positions(positions, next_position[owner], ids.size(1)),
            cache=cache,
            use_cache=True,
            # No position's logits (an empty index), but the final, normed hidden states.
            **({"output_hidden_states": True, "logits_to_keep": ids.new_empty(0)} if hidden else {}),
        )
    return first_logits, out.hidden_states[-1] if hidden else out.logits


def chunked_head_logps(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    tokens: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logps_and_entropy(head(hidden), tokens)`` with the (tokens × vocabulary) logits made ``chunk_size``
    tokens at a time and freed: under autograd each chunk is checkpointed, so backward makes its logits again
    instead of keeping them. Same values; the logits' memory is one chunk's."""
    from torch.utils.checkpoint import checkpoint

    from rl.loss import token_logps_and_entropy

    shape = tokens.shape
    flat_hidden, flat_tokens = hidden.reshape(-1, hidden.size(-1)), tokens.reshape(-1)

    def piece(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return token_logps_and_entropy(head(h), t, temperature, with_entropy=with_entropy)

    logps, entropies = [], []
    for start in range(0, flat_tokens.numel(), chunk_size):
        h, t = flat_hidden[start : start + chunk_size], flat_tokens[start : start + chunk_size]
        lp, ent = checkpoint(piece, h, t, use_reentrant=False) if torch.is_grad_enabled() else piece(h, t)
        logps.append(lp)
        entropies.append(ent)
    entropy = torch.cat(entropies).view(shape) if with_entropy else None
    return torch.cat(logps).view(shape), entropy
