"""Grouped sampling for GRPO: one prefill per prompt and image, then a batched decode of its G completions.

The decode loop is ours rather than ``model.generate`` for three reasons: the prompt's KV cache is computed once
and repeated G times (``generate`` would prefill every copy, image included); ranks of a sharded (FSDP2) model
must run the same number of forward passes, so they agree on when to stop; and the same function gives both the
sampled rollouts and the greedy validation answers, so what is trained is what is evaluated. Each step's
temperature, top-k and top-p filtering is transformers' logits warpers, the ones ``generate`` applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from datamodules.collate import prompt_inputs
from datamodules.prompts import END_OF_TURN_TOKENS
from models.families import family_of
from rl.decode_steps import DecodeArgs, decode_step
from rl.prompt_batch import prompt_positions
from rl.static_decode import StaticDecodeSteps
from rl.token_choice import draw, filtered_scores, logits_warpers


@dataclass
class SamplingConfig:
    """How completions are drawn: the vocabulary of ``transformers``' generation config and TRL."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    do_sample: bool = True
    decoding: DecodeArgs = DecodeArgs()  # static or dynamic cache, compiled step (rl/decode_steps.py)


@dataclass
class Rollout:
    """G completions per prompt, rows grouped by prompt (rows i·G … i·G + G − 1 share prompt i)."""

    completion_ids: torch.Tensor  # (N, L); after the end token: pad
    completion_mask: torch.Tensor  # (N, L) int; 1 up to and including the first end token
    is_truncated: torch.Tensor  # (N,) bool; no end token within max_new_tokens
    sampling_logps: torch.Tensor | None  # (N, L) decode-time log-probs under softmax(logits / T), if asked for
    num_generations: int


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode (no dropout) for the block, then back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def end_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Tokens that end a completion: the model's EOS ids and the chat turn's ends the tokenizer has."""
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    vocab = tokenizer.get_vocab()
    ids |= {vocab[token] for token in END_OF_TURN_TOKENS if token in vocab}
    return sorted(ids)


def special_token_ids(tokenizer: Any, keep: Iterable[int] = ()) -> list[int]:
    """Ids of the tokenizer's special tokens (image/video placeholders, chat markers, …) except ``keep``.

    The policy must never emit these: an image placeholder in a completion would make the training forward look
    for an image that does not exist, and rewards are computed on text.
    """
    ids = set(getattr(tokenizer, "all_special_ids", []))
    ids |= {
        i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(token, "special", False)
    }
    return sorted(ids - set(keep))


def model_cache(out: Any) -> Any:
    """The cache a forward with ``use_cache=True`` returned (``cache`` in transformers 5, else ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _all_ranks_done(done: bool, device: torch.device) -> bool:
    """True when every rank is done; with one process just ``done``. Sharded forwards are collectives."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return done
    flag = torch.tensor([0 if done else 1], device=device)
    dist.all_reduce(flag)
    return flag.item() == 0


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    batch: dict[str, Any],
    num_generations: int,
    sampling: SamplingConfig,
    eos_token_ids: list[int],
    pad_token_id: int,
    suppress_token_ids: list[int] | None = None,
    generator: torch.Generator | None = None,
    static_steps: StaticDecodeSteps | None = None,
    with_logps: bool = False,
) -> Rollout:
    """Draw ``num_generations`` completions for each prompt of a collated CT-VQA batch.

    ``static_steps``: the caller's static decode steps, reused between calls (``rl/decode_steps.py``).
    ``with_logps`` also records each sampled token's log-prob at decode time (for checks against the training
    forward, or importance-sampling corrections); off by default, as it costs a log-softmax per step.
    """
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    device = prompt_ids.device
    family = family_of(model)
    positions, next_position = prompt_positions(model, batch)
    out = model(**prompt_inputs(batch), position_ids=positions, use_cache=True, logits_to_keep=1)
    g = num_generations
    cache = model_cache(out)
    family.repeat_cache(cache, g)
    logits = out.logits[:, -1].repeat_interleave(g, dim=0)
    n = logits.size(0)
    eos = torch.tensor(eos_token_ids, device=device)
    suppress = torch.tensor(suppress_token_ids, device=device, dtype=torch.long) if suppress_token_ids else None
    warpers = logits_warpers(sampling)
    rows = {"prompt_mask": prompt_mask.repeat_interleave(g, dim=0), "next_position": next_position.repeat_interleave(g)}
    step_fn = decode_step(
        model, cache, positions=positions, warpers=warpers, suppress=suppress, max_new_tokens=sampling.max_new_tokens,
        decoding=sampling.decoding, static_steps=static_steps, **rows,
    )  # fmt: skip
    del out, cache  # a static step holds its own copy; a dynamic step, the cache itself
    scores = filtered_scores(logits, warpers, suppress)

    finished = torch.zeros(n, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    temperature = sampling.temperature if sampling.do_sample else 1.0
    for step in range(sampling.max_new_tokens):
        token = draw(scores, sampling.do_sample, generator)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        if with_logps:
            scaled = logits.float() / temperature
            logps.append(scaled.log_softmax(-1).gather(-1, token.unsqueeze(-1)).squeeze(-1))
        finished |= torch.isin(token, eos)
        if step == sampling.max_new_tokens - 1 or _all_ranks_done(bool(finished.all()), device):
            break
        logits, scores = step_fn(token, step)

    completion_ids = torch.stack(tokens, dim=1)
    is_eos = torch.isin(completion_ids, eos)
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), completion_ids.size(1))
    completion_mask = (torch.arange(completion_ids.size(1), device=device) <= first_eos.unsqueeze(1)).int()
    return Rollout(completion_ids, completion_mask, ~has_eos, torch.stack(logps, dim=1) if with_logps else None, g)
