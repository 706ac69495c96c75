"""Reading and validating CT-RATE-VQA JSONL files: every problem names the file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.boxes import is_box_list
from datamodules.ctrate import SPLITS, VOLUME_NAME_RE, BadSampleError, patient_id
from datamodules.views import check_views
from rewards.parsing import answer_text, normalize_answer

QUESTION_TYPES = ("presence", "abnormality", "location", "size", "count")

# field -> accepted types; the builder (datamodules/vqa_builder/) writes exactly these.
_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "split": (str,),
    "patient_id": (str,),
    "volume_name": (str,),
    "question_type": (str,),
    "question": (str,),
    "answer": (str,),
    "options": (list,),
    "slice_index": (int,),
    "roi": (list,),
    "roi_source": (str,),
}
# Optional fields -> (accepted types, value when missing). Reasoning: questions that carry only a final answer are
# what GRPO learns from (answer-only data, issue 17); the builder writes a trace for every question it makes.
_OPTIONAL: dict[str, tuple[tuple[type, ...], Any]] = {"reasoning": ((str,), "")}


def _check_answer(record: dict[str, Any], where: str) -> None:
    """The fields the rewards and metrics compare against, checked with the comparison they use
    (``rewards.parsing``), so no question hands out reward for an empty answer or has an answer no option is."""
    options, answer = record["options"], record["answer"]
    texts: dict[str, str] = {}
    for option in options:
        text = answer_text(option, options)
        if text is None:
            raise BadSampleError(f"{where}: field 'options' holds {option!r}, which is empty as an answer")
        if text in texts:
            raise BadSampleError(f"{where}: field 'options' {option!r} is the same answer as {texts[text]!r}")
        texts[text] = option
    if not normalize_answer(answer):
        raise BadSampleError(f"{where}: field 'answer' {answer!r} is empty (no text besides spaces and punctuation)")
    truth = answer_text(answer, options)
    if truth is None:
        raise BadSampleError(
            f"{where}: field 'answer' {answer!r} is not one of its options (by text, letter, or letter and text)"
        )
    # Detection metrics read a presence answer as yes or no; anything else would silently count as "no".
    if record["question_type"] == "presence" and truth not in ("yes", "no"):
        raise BadSampleError(f"{where}: field 'answer' {answer!r} is not yes or no, as a presence question needs")
    if record.get("abnormality") is not None and not isinstance(record["abnormality"], str):
        raise BadSampleError(f"{where}: field 'abnormality' should be str or null, got {record['abnormality']!r}")


def _check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise BadSampleError(f"{where}: expected a JSON object, got {type(record).__name__}")
    # Both would crash a later step: the tokenizer and UTF-8 writers reject a lone surrogate (what a "\ud800"
    # escape decodes to), and writing predictions recurses through every field.
    for name, value in record.items():
        try:
            json.dumps([name, value], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadSampleError(f"{where}: field {name!r} holds a lone surrogate (not valid Unicode)") from e
        except RecursionError as e:
            raise BadSampleError(f"{where}: field {name!r} is nested too deeply") from e
    for name, types in _FIELDS.items():
        if name not in record:
            raise BadSampleError(f"{where}: missing field '{name}'")
        value = record[name]
        if not isinstance(value, types) or (int in types and isinstance(value, bool)):
            raise BadSampleError(f"{where}: field '{name}' should be {types[0].__name__}, got {value!r}")
    for name, (types, default) in _OPTIONAL.items():
        value = record.setdefault(name, default)
        if not isinstance(value, types):
            raise BadSampleError(f"{where}: field '{name}' should be {types[0].__name__}, got {value!r}")
    if record["question_type"] not in QUESTION_TYPES:
        raise BadSampleError(
            f"{where}: field 'question_type' {record['question_type']!r} is not one of {', '.join(QUESTION_TYPES)}"
        )
    if not all(isinstance(o, str) for o in record["options"]):
        raise BadSampleError(f"{where}: field 'options' must be a list of strings, got {record['options']!r}")
    _check_answer(record, where)
    # The split picks the volume's folder and metadata table (VolumeCache), so it must be a CT-RATE one.
    name = VOLUME_NAME_RE.fullmatch(record["volume_name"])
    if name is None or name.group(1) not in SPLITS:
        raise BadSampleError(
            f"{where}: field 'volume_name' {record['volume_name']!r} is not '<split>_<patient>_<scan>_<recon>.nii.gz' "
            f"with split one of {', '.join(SPLITS)}"
        )
    # The datamodule splits train/validation by patient_id and tests on another CT-RATE split: a record whose
    # patient or split disagrees with its volume would put one patient on both sides of a split.
    split, patient = name.group(1), patient_id(record["volume_name"])
    if record["patient_id"] != patient:
        raise BadSampleError(
            f"{where}: field 'patient_id' {record['patient_id']!r} is not the patient of {record['volume_name']!r}, "
            f"{patient!r}"
        )
    if record["split"] != split:
        raise BadSampleError(f"{where}: field 'split' {record['split']!r} is not the split of its volume, {split!r}")
    if record["slice_index"] < 0:
        raise BadSampleError(f"{where}: field 'slice_index' {record['slice_index']} is negative")
    boxes = record["roi"]
    if not boxes:
        raise BadSampleError(f"{where}: field 'roi' is empty; give at least one box [x0, y0, x1, y1]")
    for box in boxes:
        if not is_box_list([box]):
            raise BadSampleError(f"{where}: field 'roi' box {box!r} is not [x0, y0, x1, y1] with x0 < x1, y0 < y1")
    if "views" in record:
        check_views(record["views"], where)
    return record


def read_vqa_jsonl(
    path: str | Path, skip_bad: bool = False, split: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a VQA JSONL file, checked field by field.

    Returns (records, problems). A bad line raises ``BadSampleError`` naming file, line and field, unless
    ``skip_bad`` is set, in which case it is left out and its message is returned in ``problems``. ``reasoning`` is
    optional (missing: ``""``, an answer-only question); a trace that is there is kept as written. ``views`` is
    optional too (candidate views, ``datamodules/views.py``), each view checked field by field. Besides each
    field's type: ids are unique in the file; the answer is not empty and, with options, denotes one of them by
    text, letter or both (``rewards.parsing.option_index``); options are distinct as answers; a presence
    answer is yes or no; ``patient_id`` and ``split`` are those of ``volume_name``, and with ``split`` given, every
    record is of that CT-RATE split (a ``valid`` volume in ``train.jsonl`` would train on test patients).
    """
    path = Path(path)
    if not path.is_file():
        raise BadSampleError(f"{path}: VQA file not found (build it with `python -m datamodules.vqa_builder`)")
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}  # id -> line of the record kept with it
    # surrogateescape: a non-UTF-8 byte spoils only its own line, which is then reported like any other bad line.
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            try:
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise BadSampleError(f"{where}: not valid UTF-8 (at column {e.start + 1})") from e
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadSampleError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
                except (ValueError, RecursionError) as e:  # an integer over 4300 digits, arrays nested too deep
                    raise BadSampleError(f"{where}: not valid JSON ({e})") from e
                record = _check_record(record, where)
                if split is not None and record["split"] != split:
                    raise BadSampleError(
                        f"{where}: field 'split' {record['split']!r} is not this file's split {split!r}"
                    )
                # Unique ids: distributed evaluation gathers rows by id (policy.gather_rows), so a repeat would
                # silently stand in for a different question.
                if (first := first_line.get(record["id"])) is not None:
                    raise BadSampleError(
                        f"{where}: field 'id' {record['id']!r} is listed again (first on line {first})"
                    )
                first_line[record["id"]] = line_no
                record["_where"] = where  # kept so later errors (volume, ROI) can name the line too
                records.append(record)
            except BadSampleError as e:
                if not skip_bad:
                    raise
                problems.append(str(e))
    return records, problems
