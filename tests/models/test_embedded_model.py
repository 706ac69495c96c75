"""The embedded tiny Qwen2.5-VL (models/embedded.py) and model loading."""

import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from models.embedded import QWEN_SPECIAL_TOKENS, build_embedded_model
from models.loading import LoRASpec, load_model


def test_loads_with_from_pretrained_and_has_qwen_tokens(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    tok = processor.tokenizer
    for token in QWEN_SPECIAL_TOKENS:
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    text = "<think>A 4 mm nodule in the right lung.</think><answer>yes</answer>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == text
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    again = build_embedded_model(tmp_path / "again")
    a = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()
    b = Qwen2_5_VLForConditionalGeneration.from_pretrained(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_targets_language_model_only_and_vision_can_be_frozen(tiny_model_dir):
    model = load_model(tiny_model_dir, lora=LoRASpec(r=4, alpha=8), freeze_vision=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    full = load_model(tiny_model_dir, freeze_vision=True)
    assert all(not p.requires_grad for n, p in full.named_parameters() if "visual" in n)
    assert any(p.requires_grad for n, p in full.named_parameters() if "language_model" in n)
