"""Evaluating any Hugging Face VLM directory (zero-shot or fine-tuned) with the training stages' own prompts,
decoding and metrics."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from lightning_modules.policy import PolicyModule
from models.attention import SdpaBackend
from models.loading import LoRASpec
from rl.config import as_args
from rl.decode_steps import DecodeArgs


class VQAEvaluator(PolicyModule):
    """Test / predict only: greedy answers, p(yes) and every diagnosis metric, no training.

    For a Lightning checkpoint of SFT or GRPO, pass ``--ckpt_path``: LightningCLI then rebuilds the module that
    wrote it from the checkpoint's hyperparameters, so the same test step runs with the trained weights.

    Args:
        model_path: Hugging Face model directory: the exported tiny model, a checkpoint of a training family, or
            any VLM ``AutoModelForImageTextToText`` loads (Gemma 3 / MedGemma, LLaVA-OneVision, InternVL, …).
        build_embedded_if_missing: build the embedded tiny model at ``model_path`` if the directory is missing.
        lora: LoRA settings of a checkpoint to load into (null for plain model directories).
        max_new_tokens: generation budget per answer.
        decoding: how answers are decoded: ``cache_implementation`` auto / static / dynamic (auto: a static cache
            on CUDA) and ``compile`` (CUDA graphs; null: on CUDA, unsharded) (``rl/decode_steps.py``).
        fsdp_param_dtype: compute dtype of FSDP2-gathered parameters (under ModelParallelStrategy only).
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2`` when installed.
        sdpa_backends: the kernels SDPA may use on GPUs (flash, efficient, cudnn, math); null = flash,
            efficient, math: cuDNN attention re-plans every new shape (``models/attention.py``).
        trust_remote_code: load a model directory that ships its own code (``auto_map`` in its config.json, e.g.
            HuatuoGPT-Vision); refused otherwise, as that code runs here.
    """

    def __init__(
        self,
        model_path: str = "artifacts/sft-model",
        build_embedded_if_missing: bool = False,
        lora: LoRASpec | None = None,
        max_new_tokens: int = 64,
        decoding: DecodeArgs = DecodeArgs(),  # noqa: B008 - frozen: a shared default is safe
        fsdp_param_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str = "sdpa",
        sdpa_backends: list[SdpaBackend] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):  # LightningCLI may hand the dataclass over as a plain dict
            lora = LoRASpec(**lora)
        self.save_hyperparameters()
        self.hparams.update(lora=lora, decoding=asdict(as_args(decoding, DecodeArgs)))
