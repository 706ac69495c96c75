"""Decode steps of one shape: the group's prompt cache copied once into a preallocated cache, and a step that a GPU
captures as a CUDA graph once and replays (``rl/decode_steps.py`` says when it is used).

The repeated prompt cache goes into transformers' ``StaticCache`` of prompt + completion-budget positions, and the
token, mask and position inputs live in fixed buffers, so every step has the same shapes and addresses. With
``compile`` the step (the model's forward, suppressed tokens, temperature, top-k and top-p) is compiled with
``torch.compile(mode="reduce-overhead")``, which on CUDA captures it once and replays it (transformers' static-cache +
compile path is the model). Only the draw itself, ``torch.multinomial`` with the rollout's ``torch.Generator``,
runs after the replay: a generator object cannot enter a compiled graph, and drawing outside keeps the tokens those
of the eager loop for the same seed. A compiled step that cannot be one graph, cannot be captured or would pass
dynamo's recompile limit runs uncompiled instead, with a warning. ``StaticDecodeSteps`` keeps built steps between
calls, so the cache is allocated and the step compiled once per shape, not once per rollout.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from transformers import LogitsProcessorList
from transformers.cache_utils import Cache

from models.families import family_of
from rl.prompt_batch import completion_positions
from rl.token_choice import filtered_scores


class StaticDecodeStep:
    """Steps of one shape over a preallocated cache, reused across calls; ``compile`` captures the step once.

    Args:
        model: the policy, in eval mode.
        cache: an empty static cache of the model's family (``VLMFamily.static_cache``), ``max_cache_len`` = L.
        rows: N, completion rows per call.
        warpers, suppress: as ``filtered_scores``.
        compile: ``torch.compile(mode="reduce-overhead")`` the step (CUDA graphs on a GPU), as one graph.
        on_compile_failure: called once when the compiled step fails (the holder then builds uncompiled steps).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cache: Cache,
        rows: int,
        warpers: LogitsProcessorList,
        suppress: torch.Tensor | None,
        compile: bool = False,
        on_compile_failure: Callable[[], None] | None = None,
    ) -> None:
        device = suppress.device if suppress is not None else next(model.parameters()).device
        self.on_compile_failure = on_compile_failure
        self.model, self.cache, self.warpers, self.suppress, self.compiled = model, cache, warpers, suppress, compile
        self.attention = torch.zeros(rows, cache.layers[0].max_cache_len, dtype=torch.long, device=device)
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.positions: torch.Tensor | None = None  # (…, N, 1), set by load
        self.next_position = torch.zeros(rows, dtype=torch.long, device=device)
        self.prompt_length = 0
        for buffer in (self.attention, self.token):  # replayed graphs read them in place (and positions, in load)
            torch._dynamo.mark_static_address(buffer)
        # reduce-overhead's one option (CUDA graphs), as one graph: a graph break, a skipped capture or the recompile
        # limit raise (see __call__) instead of silently running eager code.
        options = {"triton.cudagraphs": True, "triton.cudagraph_or_error": device.type == "cuda"}
        compiled = torch.compile(self._forward, fullgraph=True, dynamic=False, options=options) if compile else None
        self._step = compiled or self._forward

    def load(
        self, prompt_cache: Cache, prompt_mask: torch.Tensor, positions: torch.Tensor, next_position: torch.Tensor
    ) -> StaticDecodeStep:
        """Start a call: the repeated prompts' ``prompt_cache`` (N rows of P positions) into the static cache, their
        mask (N, P), rotary ``positions`` (…, N, P) and next text position (N,). Buffers keep their addresses."""
        self.cache.reset()
        for target, source in zip(self.cache.layers, prompt_cache.layers, strict=True):
            target.update(source.keys, source.values)
        self.prompt_length = prompt_mask.size(1)
        self.attention.zero_()
        self.attention[:, : self.prompt_length] = prompt_mask
        self.next_position.copy_(next_position)
        if self.positions is None:  # (…, N, 1): its leading sections are the family's, fixed for this step
            self.positions = completion_positions(positions, next_position, 1).clone()
            torch._dynamo.mark_static_address(self.positions)
        return self

    def _forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(
            input_ids=self.token,
            attention_mask=self.attention,
            position_ids=self.positions,
            cache=self.cache,
            use_cache=True,
        ).logits[:, -1]
        return logits, filtered_scores(logits, self.warpers, self.suppress)

    def __call__(self, token: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed ``token``, (N,), the ``step``-th completion token (0-based); the next token's logits and scores.
        A replayed graph overwrites its outputs: use them before the next call (the sampler does)."""
        assert self.positions is not None, "load() first"
        self.token.copy_(token.unsqueeze(1))
        self.attention[:, self.prompt_length + step] = 1
        self.positions.copy_(completion_positions(self.positions, self.next_position + step, 1))
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                return self._step()
        except Exception as error:  # noqa: BLE001 (any compile or capture failure: decode uncaptured instead)
            if not self.compiled:
                raise
            reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
            message = f"the decode step could not be compiled and captured ({reason}); decoding uncaptured"
            warnings.warn(message, stacklevel=2)
            for layer in self.cache.layers:  # a failed attempt may have counted this step's position
                layer.cumulative_length.fill_(self.prompt_length + step)
            self._step, self.compiled = self._forward, False
            if self.on_compile_failure is not None:
                self.on_compile_failure()
            return self._step()


class StaticDecodeSteps:
    """The static steps a sampler has built, kept between its calls: the cache is allocated, and the step compiled
    and captured, once per shape (rows, cache length, sampling settings), not once per rollout. The cache length is
    the prompt + completion budget rounded up to ``length_multiple`` positions, so prompts of slightly different
    padded lengths share a step. At most ``capacity`` steps are kept, least recently used out first: each holds a
    whole cache (a 7B model's, 64 rows × 1024 positions in bf16: about 3.7 GB); a GRPO run uses three shapes or more
    (rollouts, greedy and sampled validation answers, a last partial batch). A rebuilt step of a shape seen before
    is not compiled again, only captured again. After a compiled step fails once, later steps are built uncompiled.
    """

    def __init__(self, length_multiple: int = 256, capacity: int = 4) -> None:
        self.length_multiple, self.capacity = length_multiple, capacity
        self._steps: OrderedDict[tuple, StaticDecodeStep] = OrderedDict()
        self.compile_failed = False

    def _compile_failed(self) -> None:
        self.compile_failed = True

    def get(
        self,
        model: torch.nn.Module,
        rows: int,
        needed_length: int,
        warpers: LogitsProcessorList,
        suppress: torch.Tensor | None,
        compile: bool,
    ) -> StaticDecodeStep | None:
        """The step for these settings, built on first use; None when ``model``'s family has no static cache."""
        length = -(-needed_length // self.length_multiple) * self.length_multiple
        filters = tuple((type(w).__name__, tuple(sorted(vars(w).items()))) for w in warpers)
        suppressed = tuple(suppress.tolist()) if suppress is not None else ()
        key = (id(model), rows, length, filters, suppressed, compile)
        if key not in self._steps:
            cache = family_of(model).static_cache(model, length)
            if cache is None:
                return None
            compile = compile and not self.compile_failed
            self._steps[key] = StaticDecodeStep(model, cache, rows, warpers, suppress, compile, self._compile_failed)
            while len(self._steps) > self.capacity:
                self._steps.popitem(last=False)
        self._steps.move_to_end(key)
        return self._steps[key]
