"""Chat prompts and SFT targets for CT-VQA samples, rendered with the processor's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from common.model_dirs import ModelLoadError

PromptFormat = Literal["think", "no_think"]
# Chat-turn ends: Qwen/ChatML, Gemma, Idefics3/SmolVLM (a real Idefics3 stops only on Llama's end of text), Llama 3.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<end_of_utterance>", "<|eot_id|>")

# What the picture holds, per zoom layout ("none": the plain global slice, for ablations).
IMAGE_NOTES: dict[str, str] = {
    "inset": "The image shows the global axial view; an inset shows the zoomed region of interest outlined in yellow.",
    "side_by_side": "The left half shows the global axial view with the region of interest outlined in yellow; "
    "the right half shows that region zoomed in.",
    "none": "The image shows the axial view.",
}
INSTRUCTIONS: dict[str, str] = {
    "think": "First reason about where the finding is and what it looks like inside <think></think>, "
    "then give the final answer inside <answer></answer>.",
    "no_think": "Give the final answer inside <answer></answer>.",
}


VIEWS_NOTE = (
    "Each image is one candidate view of the volume at the level its label gives; the finding may be in any of "
    "them or in none."
)


def system_prompt_for(prompt_format: PromptFormat, layout: str, views: bool = False) -> str:
    """The default system prompt: a radiologist's task, what the image holds, and the answer format; ``views``:
    the prompt shows several labelled candidate views (``datamodules/views.py``)."""
    if views:
        return (
            f"You are a radiologist reading a chest CT. {VIEWS_NOTE} {IMAGE_NOTES[layout]} "
            + INSTRUCTIONS[prompt_format]
        )
    return f"You are a radiologist reading a chest CT slice. {IMAGE_NOTES[layout]} {INSTRUCTIONS[prompt_format]}"


def user_text(question: str, options: Sequence[str]) -> str:
    """The question with its answer options, which the model must answer with verbatim."""
    if options:
        return f"{question} Options: {', '.join(options)}."
    return question


def build_messages(
    question: str, options: Sequence[str], system_prompt: str, view_labels: Sequence[str] | None = None
) -> list[dict]:
    """Chat messages for one sample: system instruction, then the image and the question; with ``view_labels``,
    each label followed by its image (one image per label), then the question."""
    if view_labels is None:
        images: list[dict] = [{"type": "image"}]
    else:
        images = [part for label in view_labels for part in ({"type": "text", "text": label}, {"type": "image"})]
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [*images, {"type": "text", "text": user_text(question, options)}]},
    ]


def target_text(reasoning: str, answer: str, prompt_format: PromptFormat) -> str:
    """The assistant turn the SFT stage teaches (the end-of-turn token is appended by the collator).

    An answer-only question (empty ``reasoning``) teaches ``<answer>…</answer>`` alone, under ``think`` too: an empty
    ``<think></think>`` is the no-reasoning shortcut the format reward refuses (rewards/format.py), and teaching it
    would train the very completion GRPO then penalises; with no block, SFT teaches only what the label holds.
    """
    if prompt_format == "think" and reasoning.strip():
        return f"<think>{reasoning}</think><answer>{answer}</answer>"
    return f"<answer>{answer}</answer>"


def end_of_turn(tokenizer: Any) -> str:
    """The token that closes the assistant's turn: the first of ``END_OF_TURN_TOKENS`` the tokenizer has, else its
    EOS (a base checkpoint's EOS, e.g. Qwen2-VL's ``<|endoftext|>``, is not its chat turn's end)."""
    vocab = tokenizer.get_vocab()
    return next((token for token in END_OF_TURN_TOKENS if token in vocab), tokenizer.eos_token)


def check_generation_prompt(processor: Any, prompt_format: PromptFormat, template_kwargs: dict[str, Any]) -> None:
    """Refuse a chat template that writes ``<think>`` into the generation prompt (Qwen3-style thinking templates)
    under ``prompt_format: think``, whose targets open their own reasoning block: the model would see two.

    Raises ModelLoadError naming the model directory and the settings that resolve it."""
    if prompt_format != "think":
        return
    messages = build_messages("?", [], "")
    turns = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False, **template_kwargs)
    full = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kwargs)
    if "<think>" in full[len(turns) :]:
        raise ModelLoadError(
            f"{processor.tokenizer.name_or_path}: its chat template opens <think> in the generation prompt, and "
            "prompt_format: think writes its own; set data.init_args.chat_template_kwargs to the template's switch "
            "that leaves it out, or prompt_format: no_think"
        )
