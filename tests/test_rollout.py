"""Grouped sampling on the tiny model: one prefill per prompt, exact log-probs, end tokens and suppressed tokens."""

from __future__ import annotations

import pytest
import torch

from datamodules.ct_vqa import CTVQADataModule
from datamodules.processor import load_processor
from models.loading import load_model
from rl.loss import token_logps_and_entropy
from rl.rollout import (
    SamplingConfig,
    completion_logits,
    end_token_ids,
    eval_mode,
    grouped_completion_logits,
    repeat_prompts,
    sample_completions,
    select_rows,
    special_token_ids,
)


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


def test_select_rows_takes_exactly_the_rows_images(setup):
    _, _, batch, _ = setup
    prompts = repeat_prompts(batch, 2)
    per_image = batch["image_grid_thw"].prod(-1).tolist()
    images = torch.split(batch["pixel_values"], per_image)
    part = select_rows(prompts, slice(3, 5))  # second copy of prompt 1, first copy of prompt 2
    assert torch.equal(part["pixel_values"], torch.cat([images[1], images[2]]))
    assert torch.equal(part["prompt_input_ids"], prompts["prompt_input_ids"][3:5])


def _scored(model, batch, rollout, rows, grouped):
    """Masked log-probs of rollout rows ``rows``, the parameters' gradients of their sum, and the vision patches."""
    ids, mask, g = rollout.completion_ids, rollout.completion_mask, rollout.num_generations
    patches = []
    hook = model.model.visual.register_forward_pre_hook(lambda m, args: patches.append(args[0].shape[0]))
    model.zero_grad()
    try:
        if grouped:
            logits = grouped_completion_logits(model, batch, ids, mask, g, rows)
        else:
            logits = completion_logits(model, select_rows(repeat_prompts(batch, g), rows), ids[rows], mask[rows])
        logps = token_logps_and_entropy(logits, ids[rows], with_entropy=False)[0] * mask[rows]
        logps.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        hook.remove()
        model.zero_grad()
    return logps.detach(), grads, patches


@pytest.mark.parametrize("rows", [slice(None), slice(3, 10), slice(5, 6)], ids=["all", "cuts-groups", "one-row"])
def test_grouped_logits_and_gradients_equal_one_row_per_completion(setup, rows):
    """One prompt forward shared by its G completions gives the log-probs and gradients of G full rows, also for
    micro-batches that cut a group, and runs the vision tower on each prompt's image once."""
    model, tokenizer, batch, eos = setup
    g = 4
    sampling = SamplingConfig(max_new_tokens=10)
    generator = torch.Generator().manual_seed(0)
    rollout = sample_completions(model, batch, g, sampling, eos, tokenizer.pad_token_id, generator=generator)
    rollout.completion_mask[5, 4:] = 0  # an ended completion: nothing attends to its padded tail
    with eval_mode(model):
        model.train()  # gradients as in the policy update (the tiny model has no dropout)
        full, full_grads, full_patches = _scored(model, batch, rollout, rows, grouped=False)
        grouped, grouped_grads, grouped_patches = _scored(model, batch, rollout, rows, grouped=True)
    torch.testing.assert_close(grouped, full, atol=1e-5, rtol=1e-5)
    assert grouped_grads.keys() == full_grads.keys() and any(".visual." in n for n in full_grads)
    for name, grad in full_grads.items():
        # Summation order differs (G rows' contributions are added up in backward): float32 noise, ~1e-6 of ~10.
        torch.testing.assert_close(grouped_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)
    start, stop, _ = rows.indices(rollout.completion_ids.size(0))
    per_image = batch["image_grid_thw"].prod(-1).tolist()
    assert grouped_patches == [sum(per_image[start // g : (stop - 1) // g + 1])]  # each prompt's image once
    assert full_patches == [sum(per_image[i // g] for i in range(start, stop))]


def _training_model_and_rollout(model_dir, batch, checkpointing: bool, max_new_tokens: int, seed: int):
    """A fresh model in training mode (optionally checkpointed) and 4 completions per prompt sampled from it."""
    tokenizer = load_processor(model_dir).tokenizer
    model = load_model(model_dir, gradient_checkpointing=checkpointing).train()
    eos = end_token_ids(model, tokenizer)
    with eval_mode(model):
        rollout = sample_completions(
            model,
            batch,
            4,
            SamplingConfig(max_new_tokens=max_new_tokens),
            eos,
            tokenizer.pad_token_id,
            special_token_ids(tokenizer, keep=eos),
            generator=torch.Generator().manual_seed(seed),
        )
    return model, rollout


def _saving_bytes(saved: list[int]):
    """Autograd's saved tensors of the block, their bytes appended to ``saved``."""

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)


def _policy_logps_and_grads(model_dir, batch, grouped: bool, checkpointing: bool, rows: slice, saved: list[int]):
    """Log-probs of 4 sampled completions per prompt with gradients, and the bytes autograd saved for backward."""
    model, rollout = _training_model_and_rollout(model_dir, batch, checkpointing, max_new_tokens=10, seed=1)
    ids, mask = rollout.completion_ids, rollout.completion_mask
    with _saving_bytes(saved):
        if grouped:
            logits = grouped_completion_logits(model, batch, ids, mask, 4, rows)
        else:
            logits = completion_logits(model, select_rows(repeat_prompts(batch, 4), rows), ids[rows], mask[rows])
    logps, _ = token_logps_and_entropy(logits, ids[rows], temperature=1.0)
    (logps * mask[rows]).sum().backward()
    return logps.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rows", [slice(None), slice(2, 9)])
def test_grouped_forward_under_gradient_checkpointing(setup, tiny_model_dir, rows):
    """Checkpointed layers keep the shared prompt's cache (ReplaySafeLayer): the same log-probs and gradients as
    without checkpointing, and less memory saved for backward than checkpointed repeated rows."""
    batch = setup[2]
    saved: dict[str, list[int]] = {"plain": [], "repeated": [], "grouped": []}
    plain_logps, plain_grads = _policy_logps_and_grads(tiny_model_dir, batch, True, False, rows, saved["plain"])
    _, repeated_grads = _policy_logps_and_grads(tiny_model_dir, batch, False, True, rows, saved["repeated"])
    logps, grads = _policy_logps_and_grads(tiny_model_dir, batch, True, True, rows, saved["grouped"])
    torch.testing.assert_close(logps, plain_logps, rtol=0, atol=1e-5)
    assert grads.keys() == plain_grads.keys() == repeated_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-5)
    assert sum(saved["grouped"]) < sum(saved["repeated"]) < sum(saved["plain"])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_chunked_lm_head_gives_the_same_logps_and_gradients(setup, tiny_model_dir, checkpointing):
    """``chunked_head_logps`` over the hidden states equals the full logits path, and keeps less for backward."""
    from rl.rollout import chunked_head_logps, grouped_forward

    batch = setup[2]
    results = []
    for chunked in (False, True):
        model, rollout = _training_model_and_rollout(tiny_model_dir, batch, checkpointing, max_new_tokens=12, seed=2)
        ids, mask = rollout.completion_ids, rollout.completion_mask
        saved: list[int] = []
        with _saving_bytes(saved):
            if chunked:
                first_logits, hidden = grouped_forward(model, batch, ids, mask, 4, hidden=True)
                first, _ = token_logps_and_entropy(first_logits, ids[:, :1], 0.9, with_entropy=False)
                head = model.get_output_embeddings()
                rest, entropy = chunked_head_logps(hidden, head, ids[:, 1:], 0.9, True, chunk_size=7)
                logps = torch.cat([first, rest], dim=1)
            else:
                logits = grouped_completion_logits(model, batch, ids, mask, 4)
                logps, entropy = token_logps_and_entropy(logits, ids, 0.9)
                entropy = entropy[:, 1:]
        (logps * mask).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), entropy, grads, sum(saved)))
    (plain, plain_entropy, plain_grads, plain_saved), (chunked, entropy, grads, saved) = results
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, plain_entropy, rtol=0, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5)
    assert saved < plain_saved
