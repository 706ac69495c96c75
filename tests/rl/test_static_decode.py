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
from rl.decode_steps import DecodeArgs, resolve
from rl.sampling import Rollout, SamplingConfig, end_token_ids, sample_completions, special_token_ids
from rl.static_decode import StaticDecodeSteps
from tests.models.test_families import batch_of

# Linear-attention state (Qwen3.5), sliding-window layers (Gemma 3): the dynamic loop, with a warning.
NO_STATIC_CACHE = {"qwen3_5", "qwen3_5_moe", "gemma3"}
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
        steps = StaticDecodeSteps()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            static = _decode(model, tokenizer, batch, DecodeArgs("static"), steps, **sampling)
        fell_back = [w for w in caught if "cannot be static" in str(w.message)]
        assert bool(fell_back) == (family in NO_STATIC_CACHE) == (len(steps._steps) == 0)  # else a static step ran
        _assert_same(dynamic, static)
    assert not torch.equal(dynamic.completion_ids[0::3], dynamic.completion_ids[1::3])  # sampling did vary


def _batches_of_two_lengths(synthetic_root, model_dir) -> list[dict]:
    """Two batches of 3 prompts whose padded lengths differ."""
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(model_dir), synthetic=None, batch_size=3, num_workers=0
    )
    dm.setup("fit")
    by_length = {b["prompt_input_ids"].shape[1]: b for b in itertools.islice(dm.train_dataloader(), 8)}
    assert len(by_length) >= 2
    return list(by_length.values())[:2]


def test_static_steps_are_reused_between_calls(tiny_model_dir, synthetic_root):
    """One step (cache, buffers, compiled graph) per shape: batches whose prompts differ in length share it, and
    each call still equals the dynamic loop; another number of rows builds another."""
    model, tokenizer = load_model(tiny_model_dir).eval(), load_processor(tiny_model_dir).tokenizer
    batches = [*_batches_of_two_lengths(synthetic_root, tiny_model_dir), batch_of(synthetic_root, tiny_model_dir, 2)]
    steps = StaticDecodeSteps()
    built = []
    for batch in batches:
        static = _decode(model, tokenizer, batch, DecodeArgs("static"), steps, **SAMPLED)
        _assert_same(_decode(model, tokenizer, batch, DecodeArgs("dynamic"), **SAMPLED), static)
        built.append(next(reversed(steps._steps.values())))
    assert built[0] is built[1] and built[2] is not built[0] and len(steps._steps) == 2


def test_compiled_step_gives_the_eager_tokens_and_falls_back_when_it_cannot_compile(tiny_model_dir, synthetic_root):
    """The step that a GPU captures as a CUDA graph, compiled here on CPU (inductor, one graph, no capture): the
    same tokens; a batch of another prompt length in the same cache bucket replays it without compiling again.
    Another number of rows must compile again: past dynamo's recompile limit (here 1) the step runs uncompiled,
    with a warning, the same tokens, and later steps are built uncompiled."""
    model, tokenizer = load_model(tiny_model_dir).eval(), load_processor(tiny_model_dir).tokenizer
    first, second = _batches_of_two_lengths(synthetic_root, tiny_model_dir)
    steps = StaticDecodeSteps()
    compiled = DecodeArgs("static", compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [_decode(model, tokenizer, first, compiled, steps, **SAMPLED)]
        with torch.compiler.set_stance("fail_on_recompile"):
            results.append(_decode(model, tokenizer, second, compiled, steps, seed=4, **SAMPLED))
    assert not [w for w in caught if "could not be compiled" in str(w.message)]
    (step,) = steps._steps.values()
    assert step.compiled
    _assert_same(_decode(model, tokenizer, first, DecodeArgs("dynamic"), **SAMPLED), results[0])
    _assert_same(_decode(model, tokenizer, second, DecodeArgs("dynamic"), seed=4, **SAMPLED), results[1])

    fewer = batch_of(synthetic_root, tiny_model_dir, 2)
    with warnings.catch_warnings(record=True) as caught, torch._dynamo.config.patch(recompile_limit=1):
        warnings.simplefilter("always")
        fallback = _decode(model, tokenizer, fewer, compiled, steps, **SAMPLED)
    assert [w for w in caught if "could not be compiled" in str(w.message)]
    assert steps.compile_failed and not next(reversed(steps._steps.values())).compiled
    _assert_same(_decode(model, tokenizer, fewer, DecodeArgs("dynamic"), **SAMPLED), fallback)


def test_the_modules_decode_with_their_decoding_setting(tiny_model_dir, synthetic_root):
    """GRPO's rollouts and the validation answers go through the static step when ``decoding`` asks for it, with
    the dynamic loop's tokens."""
    from lightning_modules.grpo import GRPOModule

    batch = batch_of(synthetic_root, tiny_model_dir)
    out = {}
    for choice in ("dynamic", "static"):
        module = GRPOModule(model_path=str(tiny_model_dir), max_new_tokens=16, decoding=DecodeArgs(choice))
        module.configure_model()
        out[choice] = (module.rollout(batch, 3, seed=5)[0].completion_ids, module.greedy_answers(batch))
        assert len(module.static_steps._steps) == (2 if choice == "static" else 0)  # rollouts, answers
    assert torch.equal(out["dynamic"][0], out["static"][0]) and out["dynamic"][1] == out["static"][1]


def test_auto_is_static_and_compiled_on_one_gpu_only():
    assert resolve(DecodeArgs(), "cuda", 1) == (True, True)
    assert resolve(DecodeArgs(), "cuda", 2) == (True, False)  # sharded: uncaptured
    assert resolve(DecodeArgs(), "cpu", 1) == (False, False)
    assert resolve(DecodeArgs("static"), "cpu", 1) == (True, False)
    assert resolve(DecodeArgs("static", compile=True), "cpu", 1) == (True, True)
    assert resolve(DecodeArgs("dynamic", compile=True), "cuda", 1) == (False, False)


def test_least_recently_used_step_is_evicted(tiny_model_dir, synthetic_root):
    model, tokenizer = load_model(tiny_model_dir).eval(), load_processor(tiny_model_dir).tokenizer
    steps = StaticDecodeSteps(capacity=1)
    first, _ = _batches_of_two_lengths(synthetic_root, tiny_model_dir)
    _decode(model, tokenizer, first, DecodeArgs("static"), steps)
    kept = next(iter(steps._steps.values()))
    _decode(model, tokenizer, batch_of(synthetic_root, tiny_model_dir, 2), DecodeArgs("static"), steps)
    assert len(steps._steps) == 1 and next(iter(steps._steps.values())) is not kept


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
