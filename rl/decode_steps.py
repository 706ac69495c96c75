"""One decode step of the grouped sampler: the next token's logits (and filtered scores) for every completion row.

Two implementations behind one call, ``step(token, t) -> (logits, scores)``:

- ``DynamicDecodeStep``: the prompt cache grows by one position per step (transformers' ``DynamicCache``), the
  attention mask by one column. Every step has new shapes, so every step pays Python and kernel-launch overhead.
- ``StaticDecodeStep`` (``rl/static_decode.py``): a preallocated cache and fixed input buffers, so every step has
  the same shapes; compiled, it is captured as a CUDA graph once and replayed.

Which one runs: ``DecodeArgs`` (``model.init_args.decoding`` of SFT, GRPO and the evaluator).

Both give the same tokens as each other for the same seed (tests on CPU, per family). A family whose cache cannot
be static (Qwen3.5's linear-attention state) keeps the dynamic step (``VLMFamily.static_cache`` returns None).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.distributed as dist
from transformers import LogitsProcessorList
from transformers.cache_utils import Cache

from common.checkpoint_types import allow_in_checkpoints
from models.families import family_of
from rl.prompt_batch import completion_positions
from rl.static_decode import StaticDecodeSteps
from rl.token_choice import filtered_scores

CacheImplementation = Literal["auto", "static", "dynamic"]


@dataclass(frozen=True)
class DecodeArgs:
    """How the decode loop (rollouts, validation and test answers) caches and captures its steps.

    Raises:
        ValueError: a ``cache_implementation`` not listed.
    """

    cache_implementation: CacheImplementation = "auto"
    """transformers' name: "static" preallocates the prompt + completion cache so every step has the same shapes;
    "dynamic" grows it per step; "auto": static on CUDA, dynamic on CPU. A family whose cache cannot be static
    (Qwen3.5) decodes dynamically, with a warning."""
    compile: bool | None = None
    """Compile the static step with ``torch.compile(mode="reduce-overhead")``: captured as a CUDA graph once and
    replayed on a GPU. Null: on CUDA unless sharded over several processes (FSDP2). A step that cannot be compiled
    runs uncompiled, with a warning."""

    def __post_init__(self) -> None:
        if self.cache_implementation not in get_args(CacheImplementation):
            raise ValueError(f"cache_implementation must be auto, static or dynamic, not {self.cache_implementation!r}")


allow_in_checkpoints(DecodeArgs)
Step = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class DynamicDecodeStep:
    """Each step feeds the previous token and appends one position to the cache and one column to the mask."""

    def __init__(
        self,
        model: torch.nn.Module,
        cache: Cache,
        attention: torch.Tensor,
        positions: torch.Tensor,
        next_position: torch.Tensor,
        warpers: LogitsProcessorList,
        suppress: torch.Tensor | None,
    ) -> None:
        self.model, self.cache, self.attention = model, cache, attention
        self.positions, self.next_position = positions, next_position
        self.warpers, self.suppress = warpers, suppress

    def __call__(self, token: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed ``token``, (N,), the ``step``-th completion token (0-based); the next token's logits and scores."""
        self.attention = torch.cat([self.attention, torch.ones_like(self.attention[:, :1])], dim=1)
        logits = self.model(
            input_ids=token.unsqueeze(1),
            attention_mask=self.attention,
            position_ids=completion_positions(self.positions, self.next_position + step, 1),
            cache=self.cache,
            use_cache=True,
        ).logits[:, -1]
        return logits, filtered_scores(logits, self.warpers, self.suppress)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve(decoding: DecodeArgs, device_type: str, world_size: int) -> tuple[bool, bool]:
    """(static cache, compiled step) for ``decoding`` on a ``device_type`` device among ``world_size`` processes:
    ``auto`` is static on CUDA; ``compile`` null compiles on CUDA in one process only (a CUDA graph cannot hold
    FSDP2's all-gathers, which run in hooks; DDP is left out with it rather than told apart)."""
    cuda = device_type == "cuda"
    static = decoding.cache_implementation == "static" or (decoding.cache_implementation == "auto" and cuda)
    compile = (cuda and world_size == 1) if decoding.compile is None else decoding.compile
    return static, static and compile


def decode_step(
    model: torch.nn.Module,
    cache: Cache,
    prompt_mask: torch.Tensor,
    positions: torch.Tensor,
    next_position: torch.Tensor,
    warpers: LogitsProcessorList,
    suppress: torch.Tensor | None,
    max_new_tokens: int,
    decoding: DecodeArgs,
    static_steps: StaticDecodeSteps | None = None,
) -> Step:
    """The decode step ``decoding`` asks for, over the repeated prompts' ``cache`` (N rows of P positions) and a
    budget of ``max_new_tokens``. Static steps come from ``static_steps`` (kept by the caller between calls; None:
    a new one for this call). A family whose cache cannot be static falls back to the dynamic step, with a warning.
    """
    static, compile = resolve(decoding, prompt_mask.device.type, _world_size())
    if static:
        steps = static_steps if static_steps is not None else StaticDecodeSteps()
        # Positions 0 … P−1 hold the prompts; the completion tokens fed back take at most max_new_tokens more.
        needed = prompt_mask.size(1) + max_new_tokens
        step = steps.get(model, prompt_mask.size(0), needed, warpers, suppress, bool(compile))
        if step is not None:
            return step.load(cache, prompt_mask, positions, next_position)
        warnings.warn(  # once per place (Python's default filter)
            f"{model.config.model_type}: its cache cannot be static (family {family_of(model).name}); decoding "
            "with the dynamic cache, uncaptured",
            stacklevel=2,
        )
    return DynamicDecodeStep(model, cache, prompt_mask, positions, next_position, warpers, suppress)
