"""Property-based tests (hypothesis): arbitrary text and malformed rows never crash the VQA and CSV readers, the
answer parsing or the rewards. A reader either gives usable records or a ``BadSampleError`` naming the file, the
line and the field (or, with ``skip_bad``, a counted skip); parsing and rewards return well-typed values."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from datamodules.ctrate import SPLITS, BadSampleError, display_path, parse_volume_name, read_csv_checked
from datamodules.vqa_records import QUESTION_TYPES, read_vqa_jsonl
from rewards.accuracy import accuracy_reward
from rewards.format import format_reward
from rewards.parsing import (
    answer_text,
    contains_tag,
    count_tags,
    extract_answer,
    is_correct,
    match_option,
    normalize_answer,
    option_index,
)
from rewards.penalties import LengthPenalty, RepetitionPenalty
from rewards.scoring import RewardError, reward_name, score_completions
from rewards.validity import validity_reward

FILE_IO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PURE = settings(max_examples=300, deadline=None)

# ------------------------------------------------------------------------------------------------- strategies
TEXT = st.text(max_size=20)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT  # floats include NaN and ±inf
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)
STR_FIELDS = "id split patient_id volume_name question_type question answer roi_source reasoning".split()
FIELD_TYPES: dict[str, type] = {**dict.fromkeys(STR_FIELDS, str), "options": list, "roi": list, "slice_index": int}
# Tag soup: the fragments that trip up extraction and format checks, plus arbitrary text.
TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", "</Answer>", "< think >", "</ answer>", "<"]
FRAGMENTS = st.sampled_from([*TAGS, " ", "\n", "yes", "no", "B", "(a)", "a.", "–", "ſ"]) | TEXT
TAG_SOUP = st.lists(FRAGMENTS, max_size=12).map("".join)
# Arbitrary text with no answer tag (in any case, as the parser matches them): safe inside a built completion.
NO_TAGS = st.text(max_size=30).filter(lambda s: not contains_tag(s) and not re.search("</?answer>", s, re.I))
ANSWER_TEXT = TEXT.filter(normalize_answer)  # some text left after normalisation: what the reader takes as an answer


def _distinct_answers(options: list[str]) -> bool:
    """What the reader asks of options: each one a non-empty answer, no two the same answer."""
    texts = [answer_text(o, options) for o in options]
    return None not in texts and len(set(texts)) == len(texts)


OPTION_LISTS = st.lists(ANSWER_TEXT, max_size=5, unique_by=normalize_answer).filter(_distinct_answers)
PRESENCE_OPTIONS = st.sampled_from([["yes", "no"], ["No", "Yes"], ["A. Yes", "B. No"], []])


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid VQA record, as ``datamodules/vqa_builder/`` writes them but with arbitrary text and numbers."""
    split = draw(st.sampled_from(SPLITS))
    patient = draw(st.integers(0, 10**6))
    question_type = draw(st.sampled_from(QUESTION_TYPES))
    options = draw(PRESENCE_OPTIONS if question_type == "presence" else OPTION_LISTS)
    free_answers = st.sampled_from(["yes", "No.", "Present"]) if question_type == "presence" else ANSWER_TEXT
    x0, y0, w, h = (st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6), st.integers(1, 10**6))
    boxes = st.tuples(x0, y0, w, h).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])
    record = {
        "id": draw(TEXT),
        "split": split,
        "patient_id": f"{split}_{patient}",
        "volume_name": f"{split}_{patient}_{draw(st.sampled_from('abc'))}_{draw(st.integers(1, 9))}.nii.gz",
        "question_type": question_type,
        "question": draw(TEXT),
        "answer": draw(st.sampled_from(options)) if options else draw(free_answers),
        "options": options,
        "slice_index": draw(st.integers(0, 2**70)),
        "roi": draw(st.lists(boxes, min_size=1, max_size=3)),
        "roi_source": draw(TEXT),
        "reasoning": draw(TEXT),
    }
    if draw(st.booleans()):
        record["abnormality"] = draw(TEXT)
    return record


def _dump(value: Any, ensure_ascii: bool = False) -> bytes:
    # surrogatepass: a lone surrogate written unescaped becomes bytes that are not valid UTF-8, as in a broken file.
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def _not(kind: type) -> st.SearchStrategy[Any]:
    """JSON values of any type but ``kind`` (a bool is not an int here, as in the reader)."""
    return JSON_VALUES.filter(lambda v: not isinstance(v, kind) or (kind is int and isinstance(v, bool)))


CORRUPTIONS = (
    "missing wrong_type negative_slice inverted_box bad_coordinate bad_box empty_roi options_not_strings "
    "answer_not_option question_type volume_name lone_surrogate huge_int non_utf8 truncated not_object deep"
).split()


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """One valid record broken in one way, as a JSONL line, and the fragment its error must name (None: any)."""
    rec = draw(records())
    rec["id"] = f"bad:{rec['id']}"  # never a good record's id: a repeated id is a problem of its own
    kind = draw(st.sampled_from(CORRUPTIONS))
    field = draw(st.sampled_from(list(FIELD_TYPES)))
    box = draw(st.integers(0, len(rec["roi"]) - 1))
    fragment: str | None = f"field '{field}'"
    if kind == "missing":
        field = draw(st.sampled_from([f for f in FIELD_TYPES if f != "reasoning"]))  # reasoning is optional
        del rec[field]
        fragment = f"missing field '{field}'"
    elif kind == "wrong_type":
        rec[field] = draw(_not(FIELD_TYPES[field]))
    elif kind == "negative_slice":
        rec["slice_index"], fragment = draw(st.integers(max_value=-1)), "field 'slice_index'"
    elif kind == "inverted_box":
        axis = draw(st.sampled_from([0, 1]))
        rec["roi"][box][axis + 2] = rec["roi"][box][axis] - draw(st.integers(0, 10**6))
        fragment = "field 'roi'"
    elif kind == "bad_coordinate":
        bad = st.floats() | st.booleans() | st.none() | TEXT | st.integers(max_value=-1)
        rec["roi"][box][draw(st.integers(0, 3))] = draw(bad)
        fragment = "field 'roi'"
    elif kind == "bad_box":
        rec["roi"][box] = draw(_not(list) | st.lists(st.integers(0, 99), max_size=8).filter(lambda b: len(b) != 4))
        fragment = "field 'roi'"
    elif kind == "empty_roi":
        rec["roi"], fragment = [], "field 'roi'"
    elif kind == "options_not_strings":
        rec["options"] = [*rec["options"], draw(_not(str))]
        fragment = "field 'options'"
    elif kind == "answer_not_option":
        rec["options"] = draw(OPTION_LISTS.filter(bool))
        rec["answer"] = draw(TEXT.filter(lambda a: option_index(a, rec["options"]) is None))
        fragment = "field 'answer'"
    elif kind == "question_type":
        rec["question_type"], fragment = draw(TEXT.filter(lambda t: t not in QUESTION_TYPES)), "field 'question_type'"
    elif kind == "volume_name":
        other = st.sampled_from(["test", "validation", "Train"]).map(lambda s: f"{s}_1_a_1.nii.gz")
        rec["volume_name"] = draw(other | st.just(rec["volume_name"] + "\n") | TEXT.filter(lambda t: ".nii" not in t))
        fragment = "field 'volume_name'"
    elif kind == "lone_surrogate":
        surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
        target = draw(st.sampled_from([*STR_FIELDS, "options"]))
        if target == "options":
            rec["options"] = [*rec["options"], surrogate]
        else:
            rec[target] += surrogate
        return _dump(rec, ensure_ascii=True), f"field '{target}'"  # "\udxxx" escapes: ASCII, valid UTF-8
    elif kind == "huge_int":  # json refuses integers over 4300 digits with a ValueError, not a JSONDecodeError
        line = _dump({**rec, "slice_index": 0}).replace(b'"slice_index": 0', b'"slice_index": ' + b"9" * 5000)
        return line, "not valid JSON"
    elif kind == "non_utf8":
        text = json.dumps(rec, ensure_ascii=False)
        cut = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\x80", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80"]))
        return text[:cut].encode() + bad + text[cut:].encode(), "not valid UTF-8"
    elif kind == "truncated":
        text = _dump(rec)
        return text[: draw(st.integers(1, len(text) - 1))].rstrip(), None  # a cut may split a UTF-8 sequence
    elif kind == "not_object":
        return _dump(draw(_not(dict))), "expected a JSON object"
    elif kind == "deep":  # near the recursion limit: json may refuse it, or the field check must
        depth = draw(st.integers(900, 1500))
        return _dump(rec)[:-1] + b', "' + field.encode() + b'": ' + b"[" * depth + b"]" * depth + b"}", None
    return _dump(rec, ensure_ascii=draw(st.booleans())), fragment


BLANK_LINES = st.sampled_from([b"", b" ", b"\t", "\u00a0".encode(), "\u2028".encode()])
LINES = st.one_of(
    records().map(_dump),
    corrupted().map(lambda c: c[0]),
    JSON_VALUES.map(_dump),
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=40),
    BLANK_LINES,
)
JSONL_FILES = st.tuples(st.lists(LINES, max_size=8), st.sampled_from([b"\n", b"\r\n", b"\r"])).map(
    lambda t: t[1].join(t[0])
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per module: each example overwrites its file there (hypothesis runs examples one by one)."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------- VQA JSONL
def _nonblank_lines(data: bytes) -> list[int]:
    """1-based numbers of the lines holding more than whitespace, split the way text files are (\\n, \\r\\n, \\r)."""
    lines = re.split(r"\r\n|\r|\n", data.decode("utf-8", "surrogateescape"))
    return [i for i, line in enumerate(lines, start=1) if line.strip()]


def _assert_usable(record: dict[str, Any]) -> None:
    """The invariants ``datamodules/ct_vqa.py``, the prompts, the tokenizer and the rewards rely on."""
    for name, kind in FIELD_TYPES.items():
        assert type(record[name]) is kind, name  # `is`: a bool is no slice index or coordinate
    assert record["question_type"] in QUESTION_TYPES
    assert all(type(o) is str for o in record["options"])
    assert answer_text(record["answer"], record["options"]) is not None  # not empty; with options, one of them
    assert _distinct_answers(record["options"])
    assert record["slice_index"] >= 0
    assert parse_volume_name(record["volume_name"])[0] in SPLITS  # VolumeCache looks the split up
    assert record["roi"]
    for box in record["roi"]:
        assert type(box) is list and len(box) == 4 and all(type(v) is int for v in box)
        assert 0 <= box[0] < box[2] and 0 <= box[1] < box[3]
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere: tokenizable, writable


@FILE_IO
@given(data=JSONL_FILES)
def test_vqa_reader_skips_and_counts_or_raises_on_the_first_bad_line(workdir: Path, data: bytes) -> None:
    """Any bytes: skip_bad accounts for every non-blank line once (a usable record or a problem naming its line),
    and without skip_bad the first of those problems is raised, or the same records come back."""
    path = workdir / "vqa" / "train.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    records, problems = read_vqa_jsonl(path, skip_bad=True)
    for record in records:
        _assert_usable(record)
    assert len({r["id"] for r in records}) == len(records)  # policy.gather_rows matches rows by id
    where = re.compile(rf"{re.escape(str(path))} line (\d+)")
    record_lines = [int(where.fullmatch(r["_where"]).group(1)) for r in records]
    problem_lines = [int(where.match(p).group(1)) for p in problems]
    assert all(p.startswith(f"{path} line {n}: ") for p, n in zip(problems, problem_lines, strict=True))
    assert sorted(record_lines + problem_lines) == _nonblank_lines(data)
    if problems:
        with pytest.raises(BadSampleError) as err:
            read_vqa_jsonl(path)
        assert str(err.value) == problems[0]
    else:
        assert [r["_where"] for r in read_vqa_jsonl(path)[0]] == [r["_where"] for r in records]


@FILE_IO
@given(good=records(), bad=corrupted(), separator=st.sampled_from([b"\n", b"\r\n"]))
def test_vqa_reader_names_file_line_and_field_of_a_broken_record(
    workdir: Path, good: dict[str, Any], bad: tuple[bytes, str | None], separator: bytes
) -> None:
    """A record with a wrong type, a missing field, an absurd value or broken bytes between two good ones."""
    path = workdir / "vqa" / "valid.jsonl"
    path.parent.mkdir(exist_ok=True)
    line, fragment = bad
    good = {**good, "id": f"good:{good['id']}"}
    path.write_bytes(separator.join([_dump(good), line, _dump({**good, "id": good["id"] + "-again"})]) + separator)
    with pytest.raises(BadSampleError) as err:
        read_vqa_jsonl(path)
    assert str(err.value).startswith(f"{path} line 2: ")
    assert fragment is None or fragment in str(err.value)
    records, problems = read_vqa_jsonl(path, skip_bad=True)
    assert [r["_where"] for r in records] == [f"{path} line 1", f"{path} line 3"]
    assert problems == [str(err.value)]


# ---------------------------------------------------------------------------------------------------- CSV
CSV_TEXT = st.text(st.sampled_from(list("ab,\"'\n\r\t ;#\\\x00é")) | st.characters(), max_size=80)
CSV_BYTES = st.one_of(
    st.binary(max_size=200),
    CSV_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")),
    CSV_TEXT.map(lambda s: s.encode("utf-16", "surrogatepass")),
    st.just(b""),
)
IDENTIFIERS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@FILE_IO
@given(data=CSV_BYTES, required=st.lists(st.sampled_from(["a", "b", "VolumeName"]), unique=True, max_size=3))
def test_csv_reader_turns_any_bytes_into_a_frame_or_a_bad_sample_error(
    workdir: Path, data: bytes, required: list[str]
) -> None:
    """Garbage, empty files, other encodings: a DataFrame with the columns, or BadSampleError naming the file."""
    path = workdir / "dataset" / "metadata" / "train_metadata.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    try:
        frame = read_csv_checked(path, required)
    except BadSampleError as err:
        assert str(err).startswith("dataset/metadata/train_metadata.csv: ")
    else:
        assert isinstance(frame, pd.DataFrame) and set(required) <= set(frame.columns)


@FILE_IO
@given(
    columns=st.lists(IDENTIFIERS, min_size=1, max_size=5, unique=True),
    extra=st.lists(IDENTIFIERS, max_size=2),
    cells=st.lists(
        st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=8), min_size=5, max_size=5),
        max_size=4,
    ),
    data=st.data(),
)
def test_csv_reader_names_the_first_missing_column(
    workdir: Path, columns: list[str], extra: list[str], cells: list[list[str]], data: st.DataObject
) -> None:
    """A well-formed CSV: the required columns come back, or the first missing one is named with the file."""
    required = data.draw(st.lists(st.sampled_from(columns), unique=True)) + extra
    path = workdir / "table.csv"
    pd.DataFrame([row[: len(columns)] for row in cells], columns=columns).to_csv(path, index=False)
    missing = [c for c in required if c not in columns]
    if missing:
        with pytest.raises(BadSampleError) as err:
            read_csv_checked(path, required)
        assert str(err.value) == f"{display_path(path)}: missing column '{missing[0]}'"
    else:
        frame = read_csv_checked(path, required)
        assert list(frame.columns) == columns and len(frame) == len(cells)


# ------------------------------------------------------------------------------------------------ parsing
HUGE = st.tuples(TAG_SOUP, st.integers(1000, 5000)).map(lambda t: t[0] * t[1])


@PURE
@given(text=TAG_SOUP | st.text(), options=st.lists(TEXT, max_size=5))
def test_parsing_never_raises_and_keeps_its_types(text: str, options: list[str]) -> None:
    """Arbitrary text: every parser returns its declared type, and normalising twice changes nothing."""
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer == answer.strip())
    assert isinstance(contains_tag(text), bool) and contains_tag(text) == (count_tags(text) > 0)
    norm = normalize_answer(text)
    assert isinstance(norm, str) and normalize_answer(norm) == norm
    assert norm == norm.strip(" .,;:!?\"'*`") and "  " not in norm
    for candidate in (text, answer):
        chosen = match_option(candidate, options)
        assert chosen is None or chosen in options
    assert isinstance(is_correct(text, text, options), bool)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=HUGE, options=st.lists(TEXT, max_size=3))
def test_parsing_and_rewards_handle_huge_completions(text: str, options: list[str]) -> None:
    """Runaway completions of up to 100k characters of tag soup: well-typed results, no raise, no quadratic stall
    (a hypothesis deadline would be noisy; the file's runtime is the check)."""
    assert extract_answer(text) is None or isinstance(extract_answer(text), str)
    assert normalize_answer(normalize_answer(text)) == normalize_answer(text)
    fields = {"answer": [text[:10]], "options": [options], "question_type": ["presence"]}
    for func in (accuracy_reward, format_reward, validity_reward, RepetitionPenalty()):
        (value,) = func([text], **fields)
        assert math.isfinite(value)


@PURE
@given(earlier=st.lists(NO_TAGS, max_size=3), text=NO_TAGS, prefix=NO_TAGS, suffix=TAG_SOUP)
def test_extract_answer_takes_the_last_complete_answer(earlier: list[str], text: str, prefix: str, suffix: str) -> None:
    """Earlier answers and trailing text without an opening tag do not change which answer is read."""
    assume(not re.search("<answer>", suffix, re.I))
    blocks = "".join(f"<answer>{e}</answer>" for e in earlier)
    assert extract_answer(f"{prefix}{blocks}<answer>{text}</answer>{suffix}") == text.strip()


@PURE
@given(options=OPTION_LISTS.filter(bool), think=NO_TAGS.filter(str.strip), data=st.data())
def test_a_completion_built_from_an_option_is_judged_that_option(
    options: list[str], think: str, data: st.DataObject
) -> None:
    """``<think>…</think><answer>{option}</answer>`` is correct for that option only, when the options are what the
    reader accepts (distinct, non-empty answers). Letters: test_every_convention_of_an_option_is_that_option."""
    i = data.draw(st.integers(0, len(options) - 1))
    completion = f"<think>{think}</think><answer>{options[i]}</answer>"
    assert match_option(options[i], options) == options[i]
    assert [is_correct(completion, o, options) for o in options] == [j == i for j in range(len(options))]
    assert accuracy_reward([completion], [options[i]], [options]) == [1.0]
    # An option holding a tag (e.g. "<THINK>", any case) is read right, but no block may hold a tag: not the format.
    assert format_reward([completion]) == [0.0 if contains_tag(options[i]) else 1.0]
    assert validity_reward([completion], [options]) == [1.0]


def _not_letter_like(text: str) -> bool:
    """Text no one would read as an option letter: not one character, not "(…", not a character then ")", "." or
    ":" (an option whose text looks like a letter is ambiguous in the letter convention by nature)."""
    norm = normalize_answer(text)
    return len(norm) > 1 and not norm.startswith("(") and norm[1] not in ").:"


# Letters, digits, punctuation, spaces, marks and invisible characters, Turkish and German letters among them.
BODY = st.text(st.characters(categories=["L", "M", "N", "P", "Zs", "Cf"]) | st.sampled_from("İıŞşĞğß"), max_size=15)
BODIES = st.lists(BODY.filter(_not_letter_like), min_size=1, max_size=6, unique_by=normalize_answer)


def _forms(letter: str, body: str, lettered: bool) -> list[str]:
    """Every way to write one option: its letter, letter and text (three separators), its text; cased and with an
    invisible character; the option as written first."""
    forms = [
        letter,
        f"({letter.lower()})",
        f"{letter})",
        f"{letter}. {body}",
        f"({letter}) {body}",
        f"{letter}: {body}",
    ]
    forms += [body, body.upper(), f"{body}\u200b", f"\ufeff{letter.lower()}"]
    return [f"{letter}. {body}" if lettered else body, *forms]


@PURE
@given(bodies=BODIES, lettered=st.booleans(), data=st.data())
def test_every_convention_of_an_option_is_that_option(bodies: list[str], lettered: bool, data: st.DataObject) -> None:
    """Plain options or lettered ones ("C. x", letters in any order): a gold answer written as its letter, letter
    and text, or text alone matches a model answer written any of those ways for the same option, and no other
    option's; the reader (which resolves with option_index too) accepts every such gold."""
    n = len(bodies)
    letters = data.draw(st.permutations("ABCDEF"[:n])) if lettered else list("ABCDEF"[:n])
    options = [f"{x}. {b}" for x, b in zip(letters, bodies, strict=True)] if lettered else bodies
    assert _distinct_answers(options)
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1))
    gold = data.draw(st.sampled_from(_forms(letters[i], bodies[i], lettered)))
    assert option_index(gold, options) == i
    for said in _forms(letters[j], bodies[j], lettered):
        completion = f"<think>r</think><answer>{said}</answer>"
        assert is_correct(completion, gold, options) == (i == j), said
        assert accuracy_reward([completion], [gold], [options]) == [float(i == j)]
        assert validity_reward([completion + f"<answer>{said}</answer>"], [options]) == [1.0]


# ------------------------------------------------------------------------------------------------ rewards
COMPLETIONS = (
    TAG_SOUP
    | st.text(max_size=40)
    | st.tuples(NO_TAGS, NO_TAGS).map(lambda t: f"<think>{t[0]}</think><answer>{t[1]}</answer>")
)
META = st.fixed_dictionaries(
    {
        "id": TEXT,
        "question_type": st.sampled_from(QUESTION_TYPES),
        "question": TEXT,
        "answer": TEXT,
        "options": st.lists(TEXT, max_size=5),
        "volume_name": TEXT,
        "abnormality": st.none() | TEXT,
        "reasoning": TEXT,
        "prompt_format": st.sampled_from(["think", "no_think"]),
        "padding": st.booleans(),
    }
)


@st.composite
def grpo_batches(draw: st.DrawFn) -> tuple[list[str], dict[str, list]]:
    """Completions and their fields, built the way ``rl.trajectory.reward_fields`` builds them from a batch."""
    g = draw(st.integers(1, 4))
    meta = [m for m in draw(st.lists(META, min_size=1, max_size=3)) for _ in range(g)]
    n = len(meta)
    fields = {key: [m.get(key) for m in meta] for key in meta[0]}
    fields["completion_length"] = draw(st.lists(st.integers(0, 4096), min_size=n, max_size=n))
    fields["max_completion_length"] = [draw(st.integers(1, 4096))] * n
    return draw(st.lists(COMPLETIONS, min_size=n, max_size=n)), fields


@PURE
@given(
    batch=grpo_batches(),
    max_length=st.none() | st.integers(1, 4096),
    buffer=st.integers(0, 512),
    ngram_size=st.integers(1, 5),
    penalty=st.floats(-10, 0),
)
def test_rewards_give_one_finite_value_per_completion(
    batch: tuple[list[str], dict[str, list]], max_length: int | None, buffer: int, ngram_size: int, penalty: float
) -> None:
    """Every built-in reward, called as GRPO calls it, scores each completion in its range, and scoring stacks
    them without an error."""
    completions, fields = batch
    ranges = {
        accuracy_reward: {0.0, 1.0},
        format_reward: {0.0, 1.0},
        validity_reward: {0.0, 1.0},
        LengthPenalty(max_length, buffer, penalty): (penalty, 0.0),
        RepetitionPenalty(ngram_size, penalty): (penalty, 0.0),
    }
    for func, allowed in ranges.items():
        values = func(completions, **fields)
        assert isinstance(values, list) and len(values) == len(completions)
        for v in values:
            assert isinstance(v, float) and math.isfinite(v)
            assert v in allowed if isinstance(allowed, set) else allowed[0] <= v <= allowed[1]
    scores, errors = score_completions(list(ranges), completions, fields, on_error="raise")
    assert scores.shape == (len(completions), len(ranges)) and torch.isfinite(scores).all()
    assert errors == dict.fromkeys(map(reward_name, ranges), 0)


class FaultyReward:
    """A reward that goes wrong on the samples whose id is in ``bad``: it raises, returns NaN/±inf/an integer too
    large for a float/None/a string there, or returns one value too many."""

    def __init__(self, name: str, fault: str, bad: set[str]) -> None:
        self.name, self.fault, self.bad = name, fault, bad

    def __call__(self, completions: list[str], **fields: list[Any]) -> list[Any]:
        if self.fault == "raise" and self.bad & set(fields["id"]):
            raise KeyError("no such option")
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": -(10**400), "none": None}
        values = [special.get(self.fault, "0.5") if i in self.bad else 0.5 for i in fields["id"]]
        return values + [0.5] if self.fault == "wrong_length" else values


@PURE
@given(
    name=IDENTIFIERS,
    fault=st.sampled_from(["raise", "nan", "inf", "-inf", "huge", "string", "wrong_length"]),
    completions=st.lists(COMPLETIONS, min_size=1, max_size=6),
    data=st.data(),
)
def test_score_completions_names_a_faulty_reward_and_its_sample(
    name: str, fault: str, completions: list[str], data: st.DataObject
) -> None:
    """on_error="raise": a raise, NaN/±inf or an integer too large for a float is a RewardError naming the reward
    and its first bad sample; a malformed output is one naming the reward."""
    n = len(completions)
    ids = [f"q{i}" for i in range(n)]
    bad = data.draw(st.sets(st.integers(0, n - 1), min_size=1))
    faulty = FaultyReward(name, fault, {ids[i] for i in bad})
    with pytest.raises(RewardError) as err:
        score_completions([faulty, RepetitionPenalty()], completions, {"id": ids}, on_error="raise")
    assert repr(name) in str(err.value)
    if fault not in ("string", "wrong_length"):
        assert f"sample {min(bad)} (id 'q{min(bad)}')" in str(err.value)


@PURE
@given(
    name=IDENTIFIERS,
    fault=st.sampled_from(["raise", "nan", "inf", "-inf", "huge", "none", "string", "wrong_length"]),
    completions=st.lists(COMPLETIONS, min_size=1, max_size=6),
    data=st.data(),
)
def test_score_completions_voids_and_counts_when_asked(
    name: str, fault: str, completions: list[str], data: st.DataObject
) -> None:
    """on_error="none": a raising reward voids its column (counted once per sample), NaN/±inf/overflowing values
    become NaN and are counted one each, None becomes NaN uncounted; a malformed output still raises."""
    n = len(completions)
    ids = [f"q{i}" for i in range(n)]
    bad = data.draw(st.sets(st.integers(0, n - 1), min_size=1))
    funcs = [FaultyReward(name, fault, {ids[i] for i in bad}), RepetitionPenalty()]
    if fault in ("string", "wrong_length"):
        with pytest.raises(RewardError, match=re.escape(repr(name))):
            score_completions(funcs, completions, {"id": ids}, on_error="none")
        return
    scores, errors = score_completions(funcs, completions, {"id": ids}, on_error="none")
    voided = set(range(n)) if fault == "raise" else bad
    assert errors == {name: 0 if fault == "none" else len(voided), "repetition_penalty": 0}
    assert [i for i in range(n) if scores[i, 0].isnan()] == sorted(voided)
    assert all(scores[i, 0] == 0.5 for i in range(n) if i not in voided)
    assert torch.equal(scores[:, 1], torch.tensor(RepetitionPenalty()(completions), dtype=torch.float32))
