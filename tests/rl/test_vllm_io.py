"""What crosses to and from vLLM, without vLLM: its outputs as a Rollout, its prompts, the weights it gets."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from datamodules.ct_vqa import CTVQADataModule
from datamodules.processor import load_processor
from models.loading import LoRASpec, load_model
from rl.sampling import SamplingConfig, sample_completions
from rl.vllm_io import completion_tokens, named_weights_for_vllm, rollout_from_token_lists, vllm_prompts


def datamodule(synthetic_root, tiny_model_dir, **overrides) -> CTVQADataModule:
    dm = CTVQADataModule(
        data_dir=str(synthetic_root),
        processor_path=str(tiny_model_dir),
        synthetic=None,
        batch_size=3,
        num_workers=0,
        **overrides,
    )
    dm.setup("fit")
    return dm


def test_token_lists_give_the_samplers_own_rollout(synthetic_root, tiny_model_dir):
    """Our sampler's rollout, cut after each end token as vLLM returns it, comes back identical."""
    model = load_model(tiny_model_dir).eval()
    pad = load_processor(tiny_model_dir).tokenizer.pad_token_id
    batch = next(iter(datamodule(synthetic_root, tiny_model_dir).train_dataloader()))
    ends = list(range(40, 400))  # many end tokens: completions stop at different lengths, some never
    rollout = sample_completions(
        model, batch, 4, SamplingConfig(max_new_tokens=8), ends, pad, generator=torch.Generator().manual_seed(3)
    )
    assert rollout.is_truncated.any() and not rollout.is_truncated.all()
    lists = [
        ids[mask.bool()].tolist() for ids, mask in zip(rollout.completion_ids, rollout.completion_mask, strict=True)
    ]
    again = rollout_from_token_lists(lists, 4, ends, pad)
    assert torch.equal(again.completion_ids, rollout.completion_ids)
    assert torch.equal(again.completion_mask, rollout.completion_mask)
    assert torch.equal(again.is_truncated, rollout.is_truncated)
    assert again.num_generations == 4


def test_a_stopped_completion_keeps_its_stop_token():
    assert completion_tokens(SimpleNamespace(token_ids=[1, 2], finish_reason="stop", stop_reason=9)) == [1, 2, 9]
    assert completion_tokens(SimpleNamespace(token_ids=[1, 9], finish_reason="stop", stop_reason=9)) == [1, 9]
    assert completion_tokens(SimpleNamespace(token_ids=[1, 7], finish_reason="stop", stop_reason=None)) == [1, 7]
    assert completion_tokens(SimpleNamespace(token_ids=[1, 2], finish_reason="length", stop_reason=None)) == [1, 2]


def test_prompts_are_unpadded_ids_with_the_image_the_processor_saw(synthetic_root, tiny_model_dir):
    dm = datamodule(synthetic_root, tiny_model_dir, keep_images=True, image_size=84)
    batch = next(iter(dm.train_dataloader()))
    pad = dm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    prompts = vllm_prompts(batch, pad)
    dataset = dm.datasets["train"]
    by_id = {r["id"]: r for r in dataset.records}
    for prompt, meta in zip(prompts, batch["meta"], strict=True):
        expected = dataset.encode(by_id[meta["id"]], dataset.image(by_id[meta["id"]]))["prompt_ids"].tolist()
        # vLLM expands the image placeholder itself: the processor's run of pads comes back as one.
        first = expected.index(pad)
        run = expected.count(pad)
        assert run > 1 and expected[first : first + run] == [pad] * run
        assert prompt["prompt_token_ids"] == expected[: first + 1] + expected[first + run :]
        image = prompt["multi_modal_data"]["image"]
        assert isinstance(image, Image.Image) and max(image.size) == 84
    with pytest.raises(ValueError, match="keep_images"):
        vllm_prompts(next(iter(datamodule(synthetic_root, tiny_model_dir).train_dataloader())), pad)


def test_weights_sent_are_the_checkpoints_names_with_lora_merged(tiny_model_dir):
    plain = load_model(tiny_model_dir)
    names = [name for name, _ in plain.named_parameters()]
    assert [name for name, _ in named_weights_for_vllm(plain)] == names

    model = load_model(tiny_model_dir, lora=LoRASpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)  # a trained adapter: merging changes the weights
    ids = torch.randint(0, 200, (1, 10))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    sent = {name: tensor.clone() for name, tensor in named_weights_for_vllm(model)}
    assert list(sent) == names
    base = dict(load_model(tiny_model_dir).named_parameters())
    reference = copy.deepcopy(model).merge_and_unload()
    for name, tensor in reference.named_parameters():
        torch.testing.assert_close(sent[name], tensor)
    assert any(not torch.equal(sent[n], base[n]) for n in names)  # the adapter is in what was sent
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # and out of the training model again
