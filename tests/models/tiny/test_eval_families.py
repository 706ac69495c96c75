"""The tiny evaluation-only model families (models/tiny/): each loads like a downloaded checkpoint and generates."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from datamodules.prompts import build_messages

# family module → (model class name, generation prompt the template ends with)
FAMILIES = {
    "gemma3": ("Gemma3ForConditionalGeneration", "<start_of_turn>model\n"),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "<|im_start|>assistant\n"),
    "internvl": ("InternVLForConditionalGeneration", "<|im_start|>assistant\n"),
    "idefics3": ("Idefics3ForConditionalGeneration", "<end_of_utterance>\nAssistant:"),
    "smolvlm": ("SmolVLMForConditionalGeneration", "<end_of_utterance>\nAssistant:"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    if request.param == "smolvlm":
        pytest.importorskip("num2words", reason="SmolVLMProcessor needs num2words")
    module = importlib.import_module(f"models.tiny.{request.param}")
    return request.param, module.build(tmp_path_factory.mktemp("tiny") / request.param)


def _prompt(processor) -> str:
    messages = build_messages("Is there a nodule in this CT slice?", ["yes", "no"], "You are a radiologist.")
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_loads_through_the_auto_classes_and_renders_the_real_template(family):
    name, path = family
    model_class, generation_prompt = FAMILIES[name]
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == model_class
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    prompt = _prompt(processor)
    image_token = importlib.import_module(f"models.tiny.{name}").IMAGE_TOKEN
    assert prompt.count(image_token) == 1 and prompt.endswith(generation_prompt)
    assert "You are a radiologist." in prompt and "Is there a nodule in this CT slice?" in prompt


def test_reasoning_tags_are_single_non_special_tokens(family):
    tokenizer = AutoProcessor.from_pretrained(family[1]).tokenizer
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1, tag
    text = "<think>A 4 mm nodule in the right lung.</think><answer>yes</answer>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_generates_greedily_from_a_112_pixel_image(family):
    name, path = family
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    image = Image.new("RGB", (112, 112), (90, 90, 90))
    inputs = processor(text=[_prompt(processor)], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert 0 < out.shape[1] - prompt_len <= 8
    eos = model.generation_config.eos_token_id
    end_of_turn = processor.tokenizer.convert_tokens_to_ids(importlib.import_module(f"models.tiny.{name}").END_OF_TURN)
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id
