"""GRPO rollouts sampled by vLLM instead of our decode loop, when vLLM is installed (it is not a dependency).

    python cli.py fit --config configs/grpo_qwen2.5vl_3b_fsdp.yaml --config configs/grpo_vllm.yaml

Colocated, as TRL's ``vllm_mode="colocate"``: every training process starts one vLLM engine on its own GPU
(``distributed_executor_backend="external_launcher"``), from the same ``model_path`` the policy was loaded from.
Before the first rollout after an optimizer step the policy's current weights are copied into the engine
(LoRA merged for the copy, FSDP2 shards gathered one parameter at a time). vLLM samples the G completions of each
prompt with ``n=G`` from one prefill; the training forwards (policy and reference log-probs) stay ours, so the
loss is exactly the one without vLLM. Only the sampled tokens come from vLLM.

Sampling matches ``SamplingConfig``: temperature, top-p, top-k, the completion budget, the end tokens as stop
tokens, and the special tokens our sampler never emits left out of ``allowed_token_ids``. Rollouts are seeded per
step as ours are, but vLLM's random stream is its own, so the same seed does not give the same tokens.

This module was written against TRL 1.16's colocate code path and vLLM's public ``LLM`` API; the project's
machines have no vLLM (and no GPU in CI), so only the parts below that do not need vLLM are tested here
(``tests/test_vllm_rollout.py``): turning vLLM's outputs into a ``Rollout``, the prompts it is given, and the
weights it is sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from lightning_modules.rollout import Rollout, SamplingConfig

if TYPE_CHECKING:
    from lightning_modules.grpo import GRPOModule


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


def completion_tokens(output: Any, eos_token_ids: Sequence[int]) -> list[int]:
    """A vLLM ``CompletionOutput``'s tokens, ending with the stop token when one stopped it (our rollouts keep the
    end token: it is scored, and it is what tells a finished completion from a truncated one)."""
    tokens = list(output.token_ids)
    stop = getattr(output, "stop_reason", None)
    if output.finish_reason == "stop" and isinstance(stop, int) and (not tokens or tokens[-1] != stop):
        tokens.append(stop)
    elif output.finish_reason == "stop" and stop is None and (not tokens or tokens[-1] not in eos_token_ids):
        tokens.append(eos_token_ids[0])  # stopped by the model's EOS, which vLLM left out
    return tokens


def vllm_prompts(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """vLLM's inputs for a collated CT-VQA batch: each prompt's token ids without padding, and its PIL image."""
    rows = []
    for ids, mask, meta in zip(batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["meta"], strict=True):
        if meta.get("image") is None:
            raise ValueError(
                "VLLMRollout needs the images themselves: set `data.keep_images: true` (CTVQADataModule), so "
                "each sample's meta carries the PIL image its prompt was made from"
            )
        rows.append({"prompt_token_ids": ids[mask.bool()].tolist(), "multi_modal_data": {"image": meta["image"]}})
    return rows


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


class VLLMRollout:
    """Sample GRPO rollouts with a colocated vLLM engine (needs ``pip install vllm`` and a GPU).

    Args:
        gpu_memory_utilization: share of the GPU's memory vLLM may take (weights + KV cache); the rest is
            training's.
        max_model_len: longest prompt + completion vLLM plans for (null: the model's own limit).
        max_num_seqs: most sequences vLLM decodes at once (null: vLLM's default).
        enforce_eager: no CUDA graphs (less memory, slower decoding).
        enable_sleep_mode: release vLLM's weights and KV cache between rollouts (for tight memory).
    """

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        enforce_eager: bool = False,
        enable_sleep_mode: bool = False,
    ) -> None:
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.enforce_eager = enforce_eager
        self.enable_sleep_mode = enable_sleep_mode
        self.llm: Any = None
        self._synced_step = -1

    def setup(self, module: GRPOModule) -> None:
        """Start this process's vLLM engine on its GPU (once)."""
        if self.llm is not None:
            return
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "model.rollout_engine is VLLMRollout, but vLLM is not installed: `pip install vllm` (a version "
                "built for this torch), or remove rollout_engine to sample with the built-in decoder"
            ) from err
        trainer = module.trainer
        # vLLM's external launcher reads the process's place in the job from the environment, as torchrun sets it.
        os.environ.setdefault("RANK", str(trainer.global_rank))
        os.environ.setdefault("LOCAL_RANK", str(trainer.local_rank))
        os.environ.setdefault("WORLD_SIZE", str(trainer.world_size))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        kwargs: dict[str, Any] = dict(
            model=str(module.hparams.model_path),
            tensor_parallel_size=1,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            enable_sleep_mode=self.enable_sleep_mode,
            distributed_executor_backend="external_launcher",
            seed=trainer.global_rank,
            enable_prefix_caching=True,
        )
        if self.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.max_num_seqs
        self.llm = LLM(**kwargs)
        if self.enable_sleep_mode:
            self.llm.sleep(level=1)

    def sync_weights(self, module: GRPOModule) -> None:
        """Copy the policy's current weights into the engine (every rank takes part: gathers are collectives)."""
        runner_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in named_weights_for_vllm(module.model):
            runner_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
        self._synced_step = module.global_step

    def sample(
        self, module: GRPOModule, batch: dict[str, Any], num_generations: int, sampling: SamplingConfig, seed: int
    ) -> Rollout:
        """G completions per prompt of ``batch`` from vLLM, as a ``Rollout`` on the module's device."""
        from vllm import SamplingParams

        self.setup(module)
        if self.enable_sleep_mode:
            self.llm.wake_up()
        if self._synced_step != module.global_step:
            self.sync_weights(module)
        suppressed = set(module.suppressed_tokens)
        vocab = module.model.get_input_embeddings().num_embeddings
        params = SamplingParams(
            n=num_generations,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=list(module.end_tokens),
            allowed_token_ids=[i for i in range(vocab) if i not in suppressed],
            seed=seed,
        )
        outputs = self.llm.generate(vllm_prompts(batch), sampling_params=params, use_tqdm=False)
        if self.enable_sleep_mode:
            self.llm.sleep(level=1)
        completions = [completion_tokens(out, module.end_tokens) for request in outputs for out in request.outputs]
        return rollout_from_token_lists(
            completions, num_generations, module.end_tokens, module.tokenizer.pad_token_id, module.device
        )
