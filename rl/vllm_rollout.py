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

Written against TRL 1.16's colocate path and vLLM's sources (V1 engine), and reviewed against them: one image
placeholder per image (vLLM expands it; an expanded run would be expanded twice, silently), up to ``data.views.k``
images per prompt, the stop token kept in ``token_ids``, transformers 5 names mapped by vLLM's Qwen2.5-VL loader
(other families: theirs, unreviewed; MoE fused expert weights may not map). No machine here has vLLM, so only what
needs no vLLM is tested: vLLM's outputs as a ``Rollout``, its prompts and weights (``rl/vllm_io.py``), and GRPO
training on an engine's tokens (``tests/rl/test_vllm_rollout.py``).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

import torch

from rl.sampling import Rollout, SamplingConfig
from rl.vllm_io import (
    completion_tokens,
    images_per_prompt,
    named_weights_for_vllm,
    rollout_from_token_lists,
    vllm_prompts,
)

if TYPE_CHECKING:
    from lightning_modules.grpo import GRPOModule


def free_port() -> int:
    """A TCP port nobody listens on now (for the rendezvous of a single-process vLLM engine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runner_model(llm: Any) -> torch.nn.Module:
    """The model inside an in-process vLLM engine, where weights are loaded (its place moved between versions)."""
    paths = (
        "llm_engine.model_executor.driver_worker.model_runner.model",  # TRL 1.16's
        "llm_engine.model_executor.driver_worker.worker.model_runner.model",
        "llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model",
    )
    for path in paths:
        node = llm
        try:
            for attribute in path.split("."):
                node = getattr(node, attribute)
        except AttributeError:
            continue
        return node
    raise RuntimeError(f"cannot find the model inside this vLLM version's engine (tried llm.{', llm.'.join(paths)})")


class VLLMRollout:
    """Sample GRPO rollouts with a colocated vLLM engine (needs ``pip install vllm`` and a GPU).

    Args:
        gpu_memory_utilization: share of the GPU's memory vLLM may take (weights + KV cache); the rest is
            training's. Checked against the memory free when the fit starts, where the engine is created.
        max_model_len: longest prompt + completion vLLM plans for (null: the model's own limit, e.g. 128k
            positions for Qwen2.5-VL; set it near ``data.max_length`` + ``max_new_tokens`` to save memory).
        max_num_seqs: most sequences vLLM decodes at once (null: vLLM's default).
        max_num_batched_tokens: tokens per vLLM scheduler step; TRL's 4096 (vLLM's memory profiler misjudges
            the default).
        enforce_eager: no CUDA graphs (less memory, slower decoding).
        enable_sleep_mode: free vLLM's weights and KV cache between rollouts (for tight memory): its weights are
            then sent again before every rollout.
    """

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int = 4096,
        enforce_eager: bool = False,
        enable_sleep_mode: bool = False,
    ) -> None:
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enforce_eager = enforce_eager
        self.enable_sleep_mode = enable_sleep_mode
        self.llm: Any = None
        self._synced_step: int | None = None  # the optimizer step whose weights the engine holds
        self._allowed: list[int] | None = None

    def setup(self, module: GRPOModule) -> None:
        """Start this process's vLLM engine on its GPU (once). GRPOModule calls it in ``setup("fit")``, before the
        policy, reference and optimizer take their memory: vLLM sizes its share from the memory free then."""
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
        # vLLM's external launcher reads the process's place in the job from the environment, as torchrun sets it;
        # the trainer's view is the one that counts. A single process has no rendezvous yet: a free port.
        os.environ.update(
            RANK=str(trainer.global_rank), LOCAL_RANK=str(trainer.local_rank), WORLD_SIZE=str(trainer.world_size)
        )
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        kwargs: dict[str, Any] = dict(
            model=str(module.hparams.model_path),
            tensor_parallel_size=1,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enforce_eager=self.enforce_eager,
            enable_sleep_mode=self.enable_sleep_mode,
            distributed_executor_backend="external_launcher",
            seed=trainer.global_rank,
            enable_prefix_caching=True,
            limit_mm_per_prompt={"image": images_per_prompt(module)},  # vLLM's default is one image
            **({"max_num_seqs": self.max_num_seqs} if self.max_num_seqs is not None else {}),
        )
        self.llm = LLM(**kwargs)
        if self.enable_sleep_mode:
            self.llm.sleep(level=2)  # weights and KV cache freed; the weights are sent again at the next rollout

    @torch.no_grad()
    def sync_weights(self, module: GRPOModule) -> None:
        """Copy the policy's current weights into the engine (every rank takes part: gathers are collectives)."""
        target = runner_model(self.llm)
        for name, tensor in named_weights_for_vllm(module.model):
            target.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
        self._synced_step = module.global_step

    def allowed_tokens(self, module: GRPOModule) -> list[int]:
        """The tokenizer's ids minus the special tokens our sampler never emits (built once).

        vLLM checks the list against the tokenizer's length, not the embedding's (padded) size.
        """
        if self._allowed is None:
            suppressed = set(module.suppressed_tokens)
            self._allowed = [i for i in range(len(module.tokenizer)) if i not in suppressed]
        return self._allowed

    def sample(
        self, module: GRPOModule, batch: dict[str, Any], num_generations: int, sampling: SamplingConfig, seed: int
    ) -> Rollout:
        """G completions per prompt of ``batch`` from vLLM, as a ``Rollout`` on the module's device."""
        from vllm import SamplingParams

        self.setup(module)
        if self.enable_sleep_mode:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
            self._synced_step = None  # level 2 sleep dropped them
        if self._synced_step != module.global_step:
            self.sync_weights(module)
        # vLLM refuses greedy decoding with n > 1: one greedy answer, repeated.
        n = num_generations if sampling.do_sample else 1
        params = SamplingParams(
            n=n,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=list(module.end_tokens),
            allowed_token_ids=self.allowed_tokens(module),
            seed=seed,
        )
        image_token = module.model.config.image_token_id  # the family's placeholder (Qwen: <|image_pad|>)
        try:
            if self.enable_sleep_mode:
                self.llm.wake_up(tags=["kv_cache"])
            outputs = self.llm.generate(vllm_prompts(batch, image_token), sampling_params=params, use_tqdm=False)
        finally:
            if self.enable_sleep_mode:
                self.llm.sleep(level=2)
        completions = [
            completion_tokens(out) for request in outputs for out in request.outputs * (num_generations // n)
        ]
        return rollout_from_token_lists(
            completions, num_generations, module.end_tokens, module.tokenizer.pad_token_id, module.device
        )
