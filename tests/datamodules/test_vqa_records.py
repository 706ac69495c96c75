"""VQA JSONL reading and validation (datamodules/vqa_records.py) and batching (datamodules/collate.py)."""

import json

import pytest
import torch

from datamodules.collate import IGNORE_INDEX, VQACollator
from datamodules.ctrate import BadSampleError
from datamodules.prompts import target_text
from datamodules.vqa_records import read_vqa_jsonl

GOOD = {
    "id": "train_1_a_1-q0",
    "split": "train",
    "patient_id": "train_1",
    "volume_name": "train_1_a_1.nii.gz",
    "question_type": "presence",
    "question": "Is there a lung nodule?",
    "answer": "yes",
    "options": ["yes", "no"],
    "slice_index": 3,
    "roi": [[1, 2, 10, 12]],
    "roi_source": "mask",
    "abnormality": "Lung nodule",
    "reasoning": "r",
}


def _write(tmp_path, lines):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _with_id(i: int, **fields) -> str:
    return json.dumps({**GOOD, "id": f"q-{i}", **fields})


def test_reads_good_records(tmp_path):
    records, problems = read_vqa_jsonl(_write(tmp_path, [_with_id(1), _with_id(2)]))
    assert [r["id"] for r in records] == ["q-1", "q-2"] and problems == []


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), "missing field 'answer'"),
        (json.dumps({**GOOD, "slice_index": "3"}), "field 'slice_index'"),
        (json.dumps({**GOOD, "roi": [[5, 5, 2, 9]]}), "field 'roi'"),
        (json.dumps({**GOOD, "roi": []}), "field 'roi' is empty"),
        (json.dumps({**GOOD, "answer": "maybe"}), "field 'answer'"),
        (json.dumps({**GOOD, "question_type": "vibes"}), "field 'question_type'"),
        # Free-text gold answers with nothing to match would hand out reward for an empty <answer></answer>.
        (json.dumps({**GOOD, "question_type": "location", "options": [], "answer": ""}), "field 'answer' '' is empty"),
        (json.dumps({**GOOD, "question_type": "location", "options": [], "answer": "   "}), "field 'answer' '   '"),
        (json.dumps({**GOOD, "question_type": "location", "options": [], "answer": "\u200b."}), "field 'answer'"),
        (json.dumps({**GOOD, "answer": "E"}), "field 'answer' 'E' is not one of its options"),
        (json.dumps({**GOOD, "answer": "A. no"}), "field 'answer' 'A. no' is not one of its options"),
        (
            json.dumps({**GOOD, "options": ["yes", "no", "Yes\u200b"]}),
            "field 'options' 'Yes\\u200b' is the same answer as 'yes'",
        ),
        (json.dumps({**GOOD, "options": ["A. yes", "B. Yes"], "answer": "A"}), "field 'options' 'B. Yes' is the same"),
        (json.dumps({**GOOD, "options": ["yes", "no", " ** "]}), "field 'options' holds ' ** '"),
        (json.dumps({**GOOD, "options": [], "answer": "maybe"}), "field 'answer' 'maybe' is not yes or no"),
        (json.dumps({**GOOD, "abnormality": ["Lung nodule"]}), "field 'abnormality' should be str or null"),
        # Optional, but a trace that is there must be text.
        (json.dumps({**GOOD, "reasoning": None}), "field 'reasoning' should be str, got None"),
        (json.dumps({**GOOD, "reasoning": ["r"]}), "field 'reasoning' should be str"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, fragment):
    path = _write(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(BadSampleError) as err:
        read_vqa_jsonl(path)
    assert f"{path} line 2" in str(err.value) and fragment in str(err.value)


def test_reasoning_is_optional_and_kept_where_given(tmp_path):
    """Answer-only questions (what GRPO learns from) have no trace; a question that has one keeps it."""
    no_trace = json.dumps({k: v for k, v in GOOD.items() if k != "reasoning"} | {"id": "q-2"})
    records, problems = read_vqa_jsonl(_write(tmp_path, [_with_id(1, reasoning="left lower lobe, round"), no_trace]))
    assert problems == [] and [r["reasoning"] for r in records] == ["left lower lobe, round", ""]


@pytest.mark.parametrize(
    ("reasoning", "prompt_format", "target"),
    [
        ("round opacity", "think", "<think>round opacity</think><answer>yes</answer>"),
        # No trace: no empty <think></think> (the shortcut the format reward refuses), just the answer.
        ("", "think", "<answer>yes</answer>"),
        ("  ", "think", "<answer>yes</answer>"),
        ("round opacity", "no_think", "<answer>yes</answer>"),
    ],
)
def test_target_text_with_and_without_reasoning(reasoning, prompt_format, target):
    assert target_text(reasoning, "yes", prompt_format) == target


def test_skip_bad_counts_and_keeps_the_rest(tmp_path):
    path = _write(tmp_path, [_with_id(1), "{oops", _with_id(3)])
    records, problems = read_vqa_jsonl(path, skip_bad=True)
    assert len(records) == 2 and len(problems) == 1 and "line 2" in problems[0]


def test_repeated_id_is_refused_naming_both_lines(tmp_path):
    lines = [_with_id(1), _with_id(2, roi=[]), _with_id(3), _with_id(2), _with_id(3), _with_id(4)]
    path = _write(tmp_path, lines)
    with pytest.raises(BadSampleError) as err:
        read_vqa_jsonl(path)
    assert str(err.value) == f"{path} line 2: field 'roi' is empty; give at least one box [x0, y0, x1, y1]"
    records, problems = read_vqa_jsonl(path, skip_bad=True)
    # The refused line 2 claims no id: line 4 is the first good record with 'q-2'.
    assert [r["id"] for r in records] == ["q-1", "q-3", "q-2", "q-4"]
    assert problems[1] == f"{path} line 5: field 'id' 'q-3' is listed again (first on line 3)"
    with pytest.raises(BadSampleError) as err:
        read_vqa_jsonl(_write(tmp_path, [_with_id(1), _with_id(2), _with_id(1)]))
    assert str(err.value) == f"{tmp_path / 'train.jsonl'} line 3: field 'id' 'q-1' is listed again (first on line 1)"


LETTERED = ["A. Cardiomegaly", "B. Emphysema", "C. Lung nodule"]
PLAIN = ["Cardiomegaly", "Emphysema", "Lung nodule"]


@pytest.mark.parametrize(
    ("options", "answer"),
    [
        (LETTERED, "B"),  # OmniMedVQA / PMC-VQA / Med-R1: gold as the letter of a lettered option
        (LETTERED, "B. Emphysema"),
        (LETTERED, "emphysema"),
        (PLAIN, "B"),
        (PLAIN, "(b) Emphysema"),
        (PLAIN, "Emphysema\u200b"),
        (["A. Yes", "B. No"], "A"),  # a presence answer given as the letter of "Yes"
    ],
)
def test_answer_may_name_its_option_by_letter_text_or_both(tmp_path, options, answer):
    qtype = "presence" if len(options) == 2 else "abnormality"
    (record,), _ = read_vqa_jsonl(_write(tmp_path, [_with_id(1, options=options, answer=answer, question_type=qtype)]))
    assert record["answer"] == answer and record["options"] == options


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BadSampleError, match="VQA file not found"):
        read_vqa_jsonl(tmp_path / "nope.jsonl")


def _sample(prompt, target):
    return {
        "prompt_ids": torch.tensor(prompt),
        "mm_token_type_ids": torch.tensor([1 if t == 9 else 0 for t in prompt]),
        "pixel_values": torch.ones(4, 6),
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
        "target_ids": torch.tensor(target),
        "meta": {"id": "x"},
    }


def test_collator_left_pads_and_supervises_only_the_answer():
    batch = VQACollator(pad_token_id=0)([_sample([5, 9, 9, 6], [7, 8]), None, _sample([5, 9, 6], [7, 8])])
    assert batch["input_ids"].tolist() == [[5, 9, 9, 6, 7, 8], [0, 5, 9, 6, 7, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    x = IGNORE_INDEX
    assert batch["labels"].tolist() == [[x, x, x, x, 7, 8], [x, x, x, x, 7, 8]]
    assert batch["prompt_input_ids"].tolist() == [[5, 9, 9, 6], [0, 5, 9, 6]]
    assert batch["prompt_mm_token_type_ids"].tolist() == [[0, 1, 1, 0], [0, 0, 1, 0]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]]
    assert batch["pixel_values"].shape == (8, 6) and len(batch["meta"]) == 2


def test_collator_all_skipped_gives_empty_batch():
    assert VQACollator(pad_token_id=0)([None, None]) == {}


@pytest.mark.parametrize(
    ("fields", "split", "message"),
    [
        ({"patient_id": "train_2"}, None, "field 'patient_id' 'train_2' is not the patient of 'train_1_a_1.nii.gz'"),
        ({"split": "valid"}, None, "field 'split' 'valid' is not the split of its volume, 'train'"),
        (
            {"split": "valid", "patient_id": "valid_1", "volume_name": "valid_1_a_1.nii.gz"},
            "train",
            "field 'split' 'valid' is not this file's split 'train'",
        ),
    ],
)
def test_a_record_cannot_put_its_patient_in_another_split(tmp_path, fields, split, message):
    """The datamodule splits by patient_id and reads each CT-RATE split's own file: a record whose patient or split
    disagrees with its volume (or file) would put one patient on both sides."""
    path = _write(tmp_path, [_with_id(1), _with_id(2, **fields)])
    with pytest.raises(BadSampleError, match=f"line 2: {message}"):
        read_vqa_jsonl(path, split=split)
    records, problems = read_vqa_jsonl(path, skip_bad=True, split=split)
    assert [r["id"] for r in records] == ["q-1"] and len(problems) == 1
