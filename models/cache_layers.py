"""KV-cache layers that a prompt's forward and its completions' forward can share under autograd.

transformers' cache layers update themselves in place (``DynamicLayer`` appends; a linear-attention layer copies
its new state over the old). Under GRPO's grouped forward the prompt's cache carries gradients to the completions,
and gradient checkpointing replays a layer's forward in backward: an in-place update would append twice or
overwrite a state autograd still needs. These layers return what the model needs without changing what they hold.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer, LinearAttentionLayer


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


class PrefixLinearAttentionLayer(LinearAttentionLayer):
    """A linear-attention (Gated DeltaNet) layer's cache holding a prompt's convolution window and recurrent state,
    indexed to completion rows, for a forward that continues from them (Qwen3.5's grouped forward).

    ``update_conv_state`` returns the window joined with the new inputs, as ``LinearAttentionLayer`` does after a
    prefill, and ``update_recurrent_state`` returns the new state, neither stored: the prompt's states stay the
    inputs autograd differentiates, and a checkpointed replay reads the same ones.
    """

    def __init__(self, conv_state: torch.Tensor, recurrent_state: torch.Tensor) -> None:
        super().__init__()
        self.conv_states[0], self.recurrent_states[0] = conv_state, recurrent_state
        self.conv_kernel_size[0] = conv_state.shape[-1]
        self.is_conv_states_initialized[0] = self.is_recurrent_states_initialized[0] = True
        self.has_previous_state[0] = True
        self.dtype, self.device = conv_state.dtype, conv_state.device
        # A one-token continuation would otherwise take the fused decode step, which updates the window in place;
        # "recording past" sends it through update_conv_state like a longer one (Qwen3_5GatedDeltaNet.forward).
        self.record_past = True

    def update_conv_state(self, conv_states: torch.Tensor, state_idx: int = 0, **kwargs: Any) -> torch.Tensor:
        return torch.cat([self.conv_states[state_idx], conv_states], dim=-1)

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs: Any) -> torch.Tensor:
        return recurrent_states


class RecordingLinearAttentionLayer(LinearAttentionLayer):
    """A linear-attention layer's cache for a prompt's forward under autograd: every call runs as a prefill (no
    previous state, so a checkpointed replay computes what the forward did), and the first call's convolution
    window and final recurrent state are recorded in ``recorded`` for ``PrefixLinearAttentionLayer``.

    transformers' own layer would treat a replay as a continuation of the states it stored and copy over them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recorded: dict[str, torch.Tensor] = {}

    def update_conv_state(
        self, conv_states: torch.Tensor, state_idx: int = 0, conv_kernel_size: int | None = None, **kwargs: Any
    ) -> torch.Tensor:
        kernel = conv_kernel_size or conv_states.shape[-1]
        if conv_states.shape[-1] < kernel:  # as LinearAttentionLayer's prefill: zeros before a short prompt
            conv_states = torch.nn.functional.pad(conv_states, (kernel - conv_states.shape[-1], 0))
        self.recorded.setdefault("conv", conv_states[..., -kernel:])
        return conv_states

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs: Any) -> torch.Tensor:
        self.recorded.setdefault("recurrent", recurrent_states)
        return recurrent_states
