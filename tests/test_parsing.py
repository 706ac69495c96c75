"""Answer extraction and matching (rewards/parsing.py)."""

import pytest

from rewards.parsing import extract_answer, is_correct, match_option, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>yes</answer>", "yes"),
        ("<answer> Right lung. </answer>", "Right lung."),
        ("<answer>no</answer> then <answer>yes</answer>", "yes"),  # the last answer wins
        ("<ANSWER>No</ANSWER>", "No"),
        ("<answer>\nleft\nlung\n</answer>", "left\nlung"),
        ("no tags at all", None),
        ("<answer>unterminated", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_answer_folds_case_punctuation_and_synonyms():
    assert normalize_answer("  YES. ") == "yes"
    assert normalize_answer("Absent") == "no"
    assert normalize_answer("Right   Lung!") == "right lung"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "Cardiomegaly"),
        ("(b)", "Cardiomegaly"),
        ("b. cardiomegaly", "Cardiomegaly"),
        ("cardiomegaly", "Cardiomegaly"),
        ("b. lung nodule", None),
        ("e", None),
        ("something else", None),
        (None, None),
    ],
)
def test_match_option_by_text_or_letter(answer, expected):
    assert match_option(answer, ["Lung nodule", "Cardiomegaly", "Emphysema", "Hiatal hernia"]) == expected


def test_is_correct():
    options = ["yes", "no"]
    assert is_correct("<think>a nodule</think><answer>Yes</answer>", "yes", options)
    assert not is_correct("<think>a nodule</think><answer>no</answer>", "yes", options)
    assert not is_correct("yes", "yes", options)  # no <answer> tag: not an answer
