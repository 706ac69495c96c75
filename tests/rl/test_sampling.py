"""Grouped sampling on the tiny model: one prefill per prompt, exact log-probs, end tokens and suppressed tokens;
and transformers' logits warpers against the filtering the decode loop had before it used them."""

from __future__ import annotations

import pytest
import torch

from datamodules.ct_vqa import CTVQADataModule
from datamodules.processor import load_processor
from models.loading import load_model
from rl.grouped_forward import completion_logits
from rl.loss import token_logps_and_entropy
from rl.prompt_batch import repeat_prompts
from rl.sampling import SamplingConfig, end_token_ids, sample_completions, special_token_ids
from rl.token_choice import draw, filtered_scores, logits_warpers


@pytest.fixture(scope="module")
def setup(synthetic_root, tiny_model_dir):
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), synthetic=None, batch_size=3, num_workers=0
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = load_model(tiny_model_dir).eval()
    tokenizer = load_processor(tiny_model_dir).tokenizer
    eos = end_token_ids(model, tokenizer)
    return model, tokenizer, batch, eos


def test_one_prefill_per_prompt_and_image(setup):
    model, tokenizer, batch, eos = setup
    patches_seen = []
    hook = model.model.visual.register_forward_pre_hook(lambda m, args: patches_seen.append(args[0].shape[0]))
    try:
        rollout = sample_completions(model, batch, 4, SamplingConfig(max_new_tokens=6), eos, tokenizer.pad_token_id)
    finally:
        hook.remove()
    # The vision tower ran once, on the 3 prompts' images, not on 3 × 4 copies.
    assert patches_seen == [batch["pixel_values"].shape[0]] and batch["image_grid_thw"].shape[0] == 3
    assert rollout.completion_ids.shape == (12, 6)


def test_decode_log_probs_equal_a_full_forward(setup):
    """Cache, repeated rows and rotary positions in the decode loop agree with one pass over prompt + completion."""
    model, tokenizer, batch, eos = setup
    generator = torch.Generator().manual_seed(0)
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=50, top_p=0.9)
    rollout = sample_completions(
        model, batch, 4, sampling, eos, tokenizer.pad_token_id, generator=generator, with_logps=True
    )
    logits = completion_logits(model, repeat_prompts(batch, 4), rollout.completion_ids, rollout.completion_mask)
    logps, _ = token_logps_and_entropy(logits, rollout.completion_ids, temperature=0.7)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(logps[mask], rollout.sampling_logps[mask], atol=1e-4, rtol=0)


def test_greedy_matches_generate_and_repeats_within_the_group(setup):
    model, tokenizer, batch, eos = setup
    greedy = SamplingConfig(max_new_tokens=8, do_sample=False)
    rollout = sample_completions(model, batch, 2, greedy, eos, tokenizer.pad_token_id)
    assert torch.equal(rollout.completion_ids[0::2], rollout.completion_ids[1::2])
    prompt = batch["prompt_input_ids"]
    reference = model.generate(
        input_ids=prompt,
        attention_mask=batch["prompt_attention_mask"],
        mm_token_type_ids=batch["prompt_mm_token_type_ids"],
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )[:, prompt.shape[1] :]
    ours = rollout.completion_ids[0::2][:, : reference.shape[1]]
    assert torch.equal(ours, reference)


def test_end_token_closes_the_mask_and_special_tokens_are_never_sampled(setup):
    model, tokenizer, batch, eos = setup
    special = special_token_ids(tokenizer, keep=eos)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") in special and not set(eos) & set(special)
    # Leave only an end token and two ordinary tokens sampleable, so completions end early and at varied steps.
    allowed = {*eos, 30, 31}
    suppress = [i for i in range(len(tokenizer)) if i not in allowed]
    rollout = sample_completions(
        model,
        batch,
        4,
        SamplingConfig(max_new_tokens=16),
        eos,
        tokenizer.pad_token_id,
        suppress_token_ids=suppress,
        generator=torch.Generator().manual_seed(1),
    )
    ids, mask = rollout.completion_ids, rollout.completion_mask
    for row, row_mask, truncated in zip(ids.tolist(), mask.tolist(), rollout.is_truncated.tolist(), strict=True):
        ends = [t for t, token in enumerate(row) if token in eos]
        if truncated:
            assert not ends and all(row_mask)
            continue
        first = ends[0]
        assert row_mask == [1] * (first + 1) + [0] * (len(row) - first - 1)
        assert all(token == tokenizer.pad_token_id for token in row[first + 1 :])
        assert set(row[:first]) <= {30, 31}
    assert not rollout.is_truncated.all()


def reference_filter(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The decode loop's own temperature, top-k and top-p filtering before transformers' warpers replaced it
    (``rl/rollout.py`` at 4dc26ed, before the split), kept as the reference: top-p summed the probabilities from
    the most likely."""

    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -torch.inf)
    return logits


SETTINGS = [(1.0, 0, 1.0), (0.7, 50, 0.9), (1.0, 0, 0.9), (1.3, 0, 0.5), (1.0, 20, 1.0), (2.0, 100, 0.8)]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SETTINGS)
def test_warpers_filter_and_sample_as_the_loop_did(temperature, top_k, top_p):
    """Same filtered logits (-inf where filtered) and, for one seed, the same tokens. (1.0, 0, 1.0) is every
    shipped config's setting (configs/grpo*.yaml)."""
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) * 3
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    expected = reference_filter(logits, temperature, top_k, top_p)
    assert torch.equal(logits_warpers(sampling)(None, logits), expected)
    tokens = draw(filtered_scores(logits, logits_warpers(sampling)), True, torch.Generator().manual_seed(1))
    drawn = torch.multinomial(expected.softmax(-1), 1, generator=torch.Generator().manual_seed(1)).squeeze(-1)
    assert torch.equal(tokens, drawn)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_differs_only_at_rounding_ties_over_a_full_vocabulary(top_p):
    """Over Qwen's 151,936 tokens the float32 cumulative sums differ (transformers adds from the least likely,
    the old loop from the most likely), so a token whose preceding mass is within ~2e-5 of ``top_p`` may be kept
    by one and dropped by the other; tokens farther from the edge never are."""
    logits = torch.randn(16, 151_936, generator=torch.Generator().manual_seed(0)) * 3
    new = logits_warpers(SamplingConfig(top_p=top_p))(None, logits)
    disagree = new.isinf() != reference_filter(logits, 1.0, 0, top_p).isinf()
    probs, order = logits.double().softmax(-1).sort(dim=-1, descending=True)
    before = (probs.cumsum(-1) - probs).scatter(-1, order, probs.cumsum(-1) - probs)  # exact mass more likely
    assert ((before - top_p).abs() < 5e-5)[disagree].all()


def test_greedy_needs_no_warpers_and_top_p_keeps_the_most_likely_token():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    assert len(logits_warpers(SamplingConfig(do_sample=False, top_k=5, top_p=0.5))) == 0
    assert torch.equal(
        draw(filtered_scores(logits, logits_warpers(SamplingConfig(do_sample=False))), False), logits.argmax(-1)
    )
    # The old loop dropped every token at top_p = 0 (a NaN distribution); transformers keeps the argmax.
    kept = logits_warpers(SamplingConfig(top_p=0.0))(None, logits).isfinite()
    assert kept.sum(-1).tolist() == [1] * 4 and kept[torch.arange(4), logits.argmax(-1)].all()
