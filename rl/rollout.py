"""Grouped sampling for GRPO: one prefill per prompt and image, then a batched decode of its G completions; and
the grouped training forward (``grouped_completion_logits``): the same one-prompt-forward-per-group structure, with
gradients, for the policy update and the reference log-probs.

The decode loop is ours rather than ``model.generate`` for three reasons: the prompt's KV cache is computed once
and repeated G times (``generate`` would prefill every copy, image included); ranks of a sharded (FSDP2) model
must run the same number of forward passes, so they agree on when to stop; and the same function gives both the
sampled rollouts and the greedy validation answers, so what is trained is what is evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from transformers.cache_utils import Cache, DynamicLayer

# What a collated batch holds for its prompts: token ids, masks, and one image per row.
PROMPT_KEYS = (
    "prompt_input_ids",
    "prompt_attention_mask",
    "prompt_mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
)


@dataclass
class SamplingConfig:
    """How completions are drawn: the vocabulary of ``transformers``' generation config and TRL."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    do_sample: bool = True


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


def vl_core(model: torch.nn.Module) -> torch.nn.Module:
    """The inner ``Qwen2_5_VLModel`` (the module with ``get_rope_index``), under any LoRA/FSDP wrapping."""
    for module in model.modules():
        if hasattr(module, "get_rope_index"):
            return module
    raise TypeError(f"{type(model).__name__} has no multimodal rotary positions (get_rope_index); not a Qwen-VL model")


def prompt_positions(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal rotary positions of the prompts, (3, B, T), and each prompt's next text position, (B,)."""
    mask = batch["prompt_attention_mask"]
    positions, _ = vl_core(model).get_rope_index(
        batch["prompt_input_ids"],
        mm_token_type_ids=batch["prompt_mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=mask,
    )
    next_position = positions.masked_fill(mask.unsqueeze(0) == 0, -1).amax(dim=(0, 2)) + 1
    return positions, next_position


def end_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Tokens that end a completion: the chat turn's end (``<|im_end|>``) and the model's EOS ids."""
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
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


def _next_tokens(
    logits: torch.Tensor, sampling: SamplingConfig, suppress: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    logits = logits.float()
    if suppress is not None:
        logits = logits.index_fill(1, suppress, -torch.inf)  # out of place: the caller logs the unmasked log-probs
    if not sampling.do_sample:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the tokens before it already cover top_p; the most likely token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= sampling.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -torch.inf)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


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
    with_logps: bool = False,
) -> Rollout:
    """Draw ``num_generations`` completions for each prompt of a collated CT-VQA batch.

    ``with_logps`` also records each sampled token's log-prob at decode time (for checks against the training
    forward, or importance-sampling corrections); off by default, as it costs a log-softmax per step.
    """
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    device = prompt_ids.device
    positions, next_position = prompt_positions(model, batch)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions,
        mm_token_type_ids=batch["prompt_mm_token_type_ids"],
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        use_cache=True,
        logits_to_keep=1,
    )
    g = num_generations
    cache = out.cache
    cache.batch_repeat_interleave(g)
    logits = out.logits[:, -1].repeat_interleave(g, dim=0)
    attention = prompt_mask.repeat_interleave(g, dim=0)
    next_position = next_position.repeat_interleave(g)
    n = logits.size(0)
    eos = torch.tensor(eos_token_ids, device=device)
    suppress = torch.tensor(suppress_token_ids, device=device, dtype=torch.long) if suppress_token_ids else None

    finished = torch.zeros(n, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    temperature = sampling.temperature if sampling.do_sample else 1.0
    for step in range(sampling.max_new_tokens):
        token = _next_tokens(logits, sampling, suppress, generator)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        if with_logps:
            scaled = logits.float() / temperature
            logps.append(scaled.log_softmax(-1).gather(-1, token.unsqueeze(-1)).squeeze(-1))
        finished |= torch.isin(token, eos)
        if step == sampling.max_new_tokens - 1 or _all_ranks_done(bool(finished.all()), device):
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        step_positions = (next_position + step).view(1, n, 1).expand(3, n, 1)
        logits = model(
            input_ids=token.unsqueeze(1),
            attention_mask=attention,
            position_ids=step_positions,
            cache=cache,
            use_cache=True,
        ).logits[:, -1]

    completion_ids = torch.stack(tokens, dim=1)
    is_eos = torch.isin(completion_ids, eos)
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), completion_ids.size(1))
    completion_mask = (torch.arange(completion_ids.size(1), device=device) <= first_eos.unsqueeze(1)).int()
    return Rollout(completion_ids, completion_mask, ~has_eos, torch.stack(logps, dim=1) if with_logps else None, g)


def repeat_prompts(batch: dict[str, Any], num_generations: int) -> dict[str, torch.Tensor]:
    """The batch's prompts and images with every row repeated G times (the layout of a Rollout)."""
    g = num_generations
    per_image = batch["image_grid_thw"].prod(dim=-1).tolist()
    images = torch.split(batch["pixel_values"], per_image)
    return {
        **{key: batch[key].repeat_interleave(g, dim=0) for key in PROMPT_KEYS if key != "pixel_values"},
        "pixel_values": torch.cat([image for image in images for _ in range(g)]),
    }


def completion_logits(
    model: torch.nn.Module,
    prompts: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits predicting each completion token, (N, L, V), from one forward pass over prompt + completion.

    ``prompts`` holds one row per completion (``repeat_prompts``), one image per row: the layout TRL trains on.
    GRPO uses ``grouped_completion_logits``, the same logits for less; this is the reference the tests hold it to.
    """
    positions, next_position = prompt_positions(model, prompts)
    steps = torch.arange(completion_ids.size(1), device=completion_ids.device)
    completion_positions = (next_position.unsqueeze(1) + steps).unsqueeze(0).expand(3, -1, -1)
    length = completion_ids.size(1)
    out = model(
        input_ids=torch.cat([prompts["prompt_input_ids"], completion_ids], dim=1),
        attention_mask=torch.cat([prompts["prompt_attention_mask"], completion_mask], dim=1),
        position_ids=torch.cat([positions, completion_positions], dim=2),
        mm_token_type_ids=torch.cat([prompts["prompt_mm_token_type_ids"], torch.zeros_like(completion_ids)], dim=1),
        pixel_values=prompts["pixel_values"],
        image_grid_thw=prompts["image_grid_thw"],
        use_cache=False,
        logits_to_keep=length + 1,
    )
    return out.logits[:, :-1]


def select_rows(prompts: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """Rows ``rows`` of repeated prompts, with exactly their images' patches."""
    per_image = prompts["image_grid_thw"].prod(dim=-1)
    offsets = torch.cat([per_image.new_zeros(1), per_image.cumsum(0)]).tolist()
    start, stop, _ = rows.indices(per_image.numel())
    return {
        **{k: v[rows] for k, v in prompts.items() if k != "pixel_values"},
        "pixel_values": prompts["pixel_values"][offsets[start] : offsets[stop]],
    }


class ReplaySafeLayer(DynamicLayer):
    """One decoder layer's KV cache whose ``update`` gives the same answer when gradient checkpointing replays the
    layer in backward, so a checkpointed layer may use it (HF's ``_can_checkpoint_with_cache``).

    A ``DynamicLayer`` appends on every call, so a replay would append the same states twice. Here the states
    before this forward are a fixed ``prefix`` (the prompt's, for completion rows) and ``update`` returns the
    prefix joined with the new states without keeping them; with no prefix (the prompt's own forward) the first
    call's states are recorded, for the completion forward to use, and the replay's equal states are not.
    """

    def __init__(self, prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.prefix = prefix
        if prefix is not None:
            self.keys, self.values = prefix
            self.device, self.is_initialized = prefix[0].device, True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefix is not None:
            keys, values = self.prefix
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
        if not self.is_initialized:
            self.keys, self.values = key_states, value_states
            self.device, self.is_initialized = key_states.device, True
        return key_states, value_states


def checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of ``model`` that gradient checkpointing would replay in a forward now (none without grad)."""
    if not torch.is_grad_enabled():
        return []
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) and m.training]


@contextmanager
def checkpoint_with_cache(layers: list[torch.nn.Module]) -> Iterator[None]:
    """Let these checkpointed layers take a cache for the block (transformers drops it otherwise); only sound
    with ``ReplaySafeLayer`` caches, which a replay does not change."""
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
    Under gradient checkpointing the caches are ``ReplaySafeLayer``s, which the backward replay of a layer reads
    without changing, so checkpointed layers keep them (same logits and gradients as without checkpointing).
    """
    g = num_generations
    start, stop, _ = rows.indices(completion_ids.size(0))
    first, last = start // g, (stop - 1) // g + 1  # the prompts these rows belong to (a slice may cut a group)
    prompts = select_rows({key: batch[key] for key in PROMPT_KEYS}, slice(first, last))
    positions, next_position = prompt_positions(model, prompts)
    layers = checkpointed_layers(model)
    checkpointing = bool(layers)
    with checkpoint_with_cache(layers):
        out = model(
            input_ids=prompts["prompt_input_ids"],
            attention_mask=prompts["prompt_attention_mask"],
            position_ids=positions,
            mm_token_type_ids=prompts["prompt_mm_token_type_ids"],
            pixel_values=prompts["pixel_values"],
            image_grid_thw=prompts["image_grid_thw"],
            cache=Cache(layer_class_to_replicate=ReplaySafeLayer) if checkpointing else None,
            use_cache=True,
            logits_to_keep=1,
        )
        owner = torch.arange(start, stop, device=completion_ids.device) // g - first  # each row's prompt
        first_logits = out.logits[owner]  # the prompt's last position predicts the first completion token
        ids, mask = completion_ids[start:stop, :-1], completion_mask[start:stop, :-1]
        if ids.size(1) == 0:
            return first_logits, None
        cache = out.cache
        if checkpointing:
            cache = Cache(layers=[ReplaySafeLayer((layer.keys[owner], layer.values[owner])) for layer in cache.layers])
        else:
            cache.batch_select_indices(owner)
        steps = torch.arange(ids.size(1), device=ids.device)
        completion_positions = (next_position[owner].unsqueeze(1) + steps).unsqueeze(0).expand(3, -1, -1)
        out = model(
            input_ids=ids,  # the last token predicts nothing that is scored
            attention_mask=torch.cat([prompts["prompt_attention_mask"][owner], mask], dim=1),
            position_ids=completion_positions,
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
