"""The grouped training forward on the tiny model: one prompt forward shared by its G completions gives the
log-probs and gradients of G full rows, with and without gradient checkpointing, and the chunked LM head agrees."""

from __future__ import annotations

import pytest
import torch

from datamodules.ct_vqa import CTVQADataModule
from datamodules.processor import load_processor
from models.loading import load_model
from rl.grouped_forward import chunked_head_logps, completion_logits, grouped_completion_logits, grouped_forward
from rl.loss import token_logps_and_entropy
from rl.prompt_batch import image_rows, repeat_prompts, select_rows
from rl.sampling import SamplingConfig, end_token_ids, eval_mode, sample_completions, special_token_ids


@pytest.fixture(scope="module")
def batch(synthetic_root, tiny_model_dir):
    """One training batch of 3 prompts."""
    dm = CTVQADataModule(
        data_dir=str(synthetic_root), processor_path=str(tiny_model_dir), synthetic=None, batch_size=3, num_workers=0
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


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


@pytest.mark.parametrize("rows", [slice(None), slice(3, 10), slice(5, 6)], ids=["all", "cuts-groups", "one-row"])
def test_grouped_logits_and_gradients_equal_one_row_per_completion(batch, tiny_model_dir, rows):
    """One prompt forward shared by its G completions gives the log-probs and gradients of G full rows, also for
    micro-batches that cut a group, and runs the vision tower on each prompt's image once."""
    # In training mode: gradients as in the policy update (the tiny model has no dropout).
    model, rollout = _training_model_and_rollout(tiny_model_dir, batch, False, max_new_tokens=10, seed=0)
    rollout.completion_mask[5, 4:] = 0  # an ended completion: nothing attends to its padded tail
    check_grouped_against_full_rows(model, batch, rollout, rows)


def check_grouped_against_full_rows(model, batch, rollout, rows: slice) -> None:
    """Grouped and full-row log-probs and gradients of rollout rows ``rows`` agree, and the grouped forward runs
    each prompt's image through the vision tower once."""
    g = rollout.num_generations
    full, full_grads, full_patches = _scored(model, batch, rollout, rows, grouped=False)
    grouped, grouped_grads, grouped_patches = _scored(model, batch, rollout, rows, grouped=True)
    torch.testing.assert_close(grouped, full, atol=1e-5, rtol=1e-5)
    assert grouped_grads.keys() == full_grads.keys() and any(".visual." in n for n in full_grads)
    for name, grad in full_grads.items():
        # Summation order differs (G rows' contributions are added up in backward): float32 noise, ~1e-6 of ~10.
        torch.testing.assert_close(grouped_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)
    start, stop, _ = rows.indices(rollout.completion_ids.size(0))
    per_prompt = image_rows(batch, "pixel_values")  # patches of each prompt's images (one or several views)
    assert grouped_patches == [sum(per_prompt[start // g : (stop - 1) // g + 1])]  # each prompt's images once
    assert full_patches == [sum(per_prompt[i // g] for i in range(start, stop))]


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
def test_grouped_forward_under_gradient_checkpointing(batch, tiny_model_dir, rows):
    """Checkpointed layers keep the shared prompt's cache (ReplaySafeLayer): the same log-probs and gradients as
    without checkpointing, and less memory saved for backward than checkpointed repeated rows."""
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
def test_chunked_lm_head_gives_the_same_logps_and_gradients(batch, tiny_model_dir, checkpointing):
    """``chunked_head_logps`` over the hidden states equals the full logits path, and keeps less for backward."""
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
