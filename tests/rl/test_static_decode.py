"""The static-cache decode step (rl/static_decode.py) against the dynamic loop, token for token, on every family's
tiny model; its reuse between calls; the compiled (captured on a GPU) step on CPU; and the setting's way in."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from datamodules.ct_vqa import CTVQADataModule
from datamodules.processor import load_processor
from models.loading import load_model
from models.tiny.builders import TINY_BUILDERS
from rl.decode_steps import DecodeArgs
from rl.sampling import Rollout, SamplingConfig, end_token_ids, sample_completions, special_token_ids
from rl.static_decode import StaticDecodeSteps
from tests.models.test_families import batch_of

NO_STATIC_CACHE = {"qwen3_5", "qwen3_5_moe"}  # linear-attention state: the dynamic loop, with a warning
SAMPLED = {"temperature": 0.9, "top_k": 50, "top_p": 0.9}


def _decode(model, tokenizer, batch, decoding: DecodeArgs, steps=None, seed: int = 3, **sampling) -> Rollout:
    eos = end_token_ids(model, tokenizer)
    config = SamplingConfig(max_new_tokens=10, decoding=decoding, **sampling)
    generator = torch.Generator().manual_seed(seed)
    suppress = special_token_ids(tokenizer, keep=eos)
    return sample_completions(
        model, batch, 3, config, eos, tokenizer.pad_token_id, suppress, generator, with_logps=True, static_steps=steps
    )


def _assert_same(a: Rollout, b: Rollout) -> None:
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    mask = a.completion_mask.bool()
    torch.testing.assert_close(a.sampling_logps[mask], b.sampling_logps[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", sorted(TINY_BUILDERS))
def test_static_cache_gives_the_dynamic_loops_tokens(family, family_model_dir, synthetic_root):
    """Greedy and sampled (suppressed tokens, temperature, top-k, top-p; same generator seed): the same tokens and
    decode-time log-probs with the preallocated cache as with the growing one."""
    model_dir = family_model_dir(family)
    model, tokenizer = load_model(model_dir).eval(), load_processor(model_dir).tokenizer
    batch = batch_of(synthetic_root, model_dir)
    for sampling in ({"do_sample": False}, SAMPLED):
        dynamic = _decode(model, tokenizer, batch, DecodeArgs("dynamic"), **sampling)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            static = _decode(model, tokenizer, batch, DecodeArgs("static"), **sampling)
        fell_back = [w for w in caught if "cannot be static" in str(w.message)]
        assert bool(fell_back) == (family in NO_STATIC_CACHE)
        _assert_same(dynamic, static)
    assert not torch.equal(dynamic.completion_ids[0::3], dynamic.completion_ids[1::3])  # sampling did vary


def test_static_steps_are_reused_between_calls(tiny_model_dir, synthetic_root):
    """One step (cache, buffers, compiled graph) per shape: batches whose prompts differ in length share it, and
    each call still equals the dynamic loop; another number of rows builds another."""
    model, tokenizer = load_model(tiny_model_dir).eval(), load_processor(tiny_model_dir).tokenizer
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), synthetic=None, batch_size=3, num_workers=0
    )
    dm.setup("fit")
    by_length = {b["prompt_input_ids"].shape[1]: b for b in itertools.islice(dm.train_dataloader(), 8)}
    assert len(by_length) >= 2
    batches = [*list(by_length.values())[:2], batch_of(synthetic_root, tiny_model_dir, 2)]
    steps = StaticDecodeSteps()
    built = []
    for batch in batches:
        static = _decode(model, tokenizer, batch, DecodeArgs("static"), steps, **SAMPLED)
        _assert_same(_decode(model, tokenizer, batch, DecodeArgs("dynamic"), **SAMPLED), static)
        built.append(next(reversed(steps._steps.values())))
    assert built[0] is built[1] and built[2] is not built[0] and len(steps._steps) == 2


def test_compiled_step_gives_the_eager_tokens(tiny_model_dir, synthetic_root):
    """The step that a GPU captures as a CUDA graph, compiled here on CPU (inductor, no graph): the same tokens;
    a second call replays the compiled step instead of compiling again."""
    model, tokenizer = load_model(tiny_model_dir).eval(), load_processor(tiny_model_dir).tokenizer
    batch = batch_of(synthetic_root, tiny_model_dir)
    steps = StaticDecodeSteps()
    compiled = DecodeArgs("static", compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _decode(model, tokenizer, batch, compiled, steps, **SAMPLED)
        again = _decode(model, tokenizer, batch, compiled, steps, seed=4, **SAMPLED)
    assert not [w for w in caught if "could not be compiled" in str(w.message)]
    (step,) = steps._steps.values()
    assert step.compiled
    _assert_same(_decode(model, tokenizer, batch, DecodeArgs("dynamic"), **SAMPLED), first)
    _assert_same(_decode(model, tokenizer, batch, DecodeArgs("dynamic"), seed=4, **SAMPLED), again)


def test_decoding_setting_reaches_the_decode_loop_and_is_checked():
    from cli import main

    for config in ("configs/sft.yaml", "configs/grpo.yaml", "configs/eval.yaml"):
        cli = main(
            ["--config", config, "--model.init_args.decoding.cache_implementation", "static",
             "--model.init_args.build_embedded_if_missing", "false"],
            run=False,
        )  # fmt: skip
        assert cli.model.decoding == DecodeArgs("static")
        if hasattr(cli.model, "sampling"):
            assert cli.model.sampling.decoding == DecodeArgs("static")
    with pytest.raises(ValueError, match="cache_implementation must be auto, static or dynamic"):
        DecodeArgs("paged")  # type: ignore[arg-type]
