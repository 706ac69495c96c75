"""What crosses between our training and a vLLM engine, none of it needing vLLM: the prompts it is given, the
weights it is sent, and the tokens it samples turned into a ``Rollout`` exactly as our sampler makes one
(``tests/rl/test_vllm_io.py``). The engine itself is ``rl/vllm_rollout.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from rl.sampling import Rollout


def rollout_from_token_lists(
    completions: Sequence[Sequence[int]],
    num_generations: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    device: torch.device | str = "cpu",
) -> Rollout:
    """A ``Rollout`` from per-completion token lists (rows grouped by prompt, G per prompt), as our sampler makes
    it: ids padded to the longest completion, the mask 1 up to and including the first end token, truncated when
    there is no end token."""
    eos = set(eos_token_ids)
    length = max(1, max((len(c) for c in completions), default=0))
    ids = torch.full((len(completions), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(completions), length), dtype=torch.int)
    truncated = torch.ones(len(completions), dtype=torch.bool)
    for row, tokens in enumerate(completions):
        tokens = list(tokens)
        end = next((i for i, t in enumerate(tokens) if t in eos), None)
        kept = tokens if end is None else tokens[: end + 1]
        ids[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
        mask[row, : len(kept)] = 1
        truncated[row] = end is None
    return Rollout(ids.to(device), mask.to(device), truncated.to(device), None, num_generations)


def completion_tokens(output: Any) -> list[int]:
    """A vLLM ``CompletionOutput``'s tokens, ending with the stop token when one stopped it (our rollouts keep the
    end token: it is scored, and it is what tells a finished completion from a truncated one)."""
    tokens = list(output.token_ids)
    stop = getattr(output, "stop_reason", None)
    # vLLM (V1) keeps the stop token in token_ids; this guards versions or paths that would leave it out.
    if output.finish_reason == "stop" and isinstance(stop, int) and (not tokens or tokens[-1] != stop):
        tokens.append(stop)
    return tokens


def vllm_prompts(batch: dict[str, Any], image_token_id: int) -> list[dict[str, Any]]:
    """vLLM's inputs for a collated CT-VQA batch: each prompt's token ids without padding, and its PIL image (a list
    of them for a prompt with several candidate views).

    Our processor has already expanded each image's placeholder into one ``<|image_pad|>`` per merged patch;
    vLLM expands a token prompt's placeholder itself, so each run of them is collapsed back to one (passed
    expanded, a prompt would silently get the run twice over).
    """
    rows = []
    for ids, mask, meta in zip(batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["meta"], strict=True):
        if meta.get("image") is None:
            raise ValueError(
                "VLLMRollout needs the images themselves: set `data.keep_images: true` (CTVQADataModule), so "
                "each sample's meta carries the PIL image its prompt was made from"
            )
        tokens = ids[mask.bool()].tolist()
        collapsed = [t for i, t in enumerate(tokens) if t != image_token_id or i == 0 or tokens[i - 1] != t]
        rows.append({"prompt_token_ids": collapsed, "multi_modal_data": {"image": meta["image"]}})
    return rows


def images_per_prompt(module: Any) -> int:
    """The most images one prompt holds: the datamodule's candidate views (``datamodules/views.py``), else one."""
    views = getattr(getattr(module.trainer, "datamodule", None), "hparams", {}).get("views")
    return views.k if views is not None else 1


def named_weights_for_vllm(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the names of its Hugging Face checkpoint, LoRA merged, one full tensor at a time.

    With LoRA the adapter is merged into the base weights while the caller consumes the iterator and unmerged
    after it, so the training weights are unchanged. Sharded (FSDP2) parameters are gathered one at a time:
    every rank must consume the whole iterator, because each gather is a collective.
    """
    from peft import PeftModel

    is_peft = isinstance(model, PeftModel)
    if is_peft:
        if any(hasattr(p, "full_tensor") for p in model.parameters()):
            raise NotImplementedError("VLLMRollout with LoRA under FSDP2: merge the adapter per shard is not supported")
        model.merge_adapter()
    try:
        for name, param in model.named_parameters():
            if is_peft:
                if "lora_" in name:
                    continue  # merged into the base weights
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
            yield name, tensor.detach()
    finally:
        if is_peft:
            model.unmerge_adapter()
